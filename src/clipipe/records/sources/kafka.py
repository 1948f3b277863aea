"""The `kafka` source: a consumer-group member (aiokafka) that commits offsets only after the output.

Each batch holds what one `getmany` returned (at most `batch_size` messages, possibly from several
partitions, each partition's messages in offset order). The source remembers the next offset of
every message it yielded; `commit()` -- which the realtime engine calls only after the output has
acknowledged the batch and dedup has recorded its ids -- commits exactly those offsets. A crash
anywhere before that commit re-delivers the batch (at-least-once); nothing is ever committed ahead
of the output. Auto-commit is always off.

Partitions are spread over the processes of one `group_id` by Kafka's group protocol; after a
rebalance, offsets of partitions this process no longer owns are dropped (their new owner re-reads
from the last commit, and shared dedup skips what was already output).

Each record's metadata carries kafka_topic, kafka_partition, kafka_offset, kafka_key (text) and
kafka_timestamp (ms since the epoch); a mapping reads them with `meta("kafka_key")`.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, AsyncGenerator, Literal

from clipipe.errors import RecordError, SpecError
from clipipe.records.core import Batch, Source
from clipipe.records.registry import option, register
from clipipe.spec.parse import parse_duration

#: longest single wait in getmany: short enough that idle_timeout and max_messages are honoured
#: promptly, long enough not to spin
POLL_CAP_S = 1.0


@dataclass
class KafkaConfig:
    brokers: list[str] = option("Bootstrap brokers, host:port.", examples=[["127.0.0.1:9092"]])
    topics: list[str] = option("Topics to consume.", examples=[["user-events"]])
    group_id: str = option("Consumer group: processes with the same group share the partitions; "
                           "offsets are committed for it.", examples=["pipeline-consumer"])
    start_offset: Literal["earliest", "latest"] = option(
        "Where a group without committed offsets starts: the oldest message or only new ones.",
        "earliest")
    format: Literal["json", "lines"] = option(
        "json: each message value is one JSON document; lines: the value as text in `field`.", "json")
    field: str = option("lines: the field that holds the message text.", "line")
    batch_size: int = option("Most messages per batch (one output write, one commit).", 500)
    batch_timeout: str | float = option(
        "After the first message of a batch arrived, wait this long for more to fill it "
        "(0: hand over at once what is there; lowest latency).", 0.0, examples=["50ms"])
    max_messages: int | None = option("Stop after this many messages (tests, catch-up jobs).", None)
    idle_timeout: str | float | None = option(
        "Stop when no message arrived for this long (default: run until stopped).", None,
        examples=["30s"])
    client_id: str = option("Client id shown in the broker's logs.", "clipipe")
    session_timeout: str | float = option(
        "The group drops a member silent for this long (a crashed process's partitions move "
        "after it).", "10s")
    heartbeat_interval: str | float = option("How often the member tells the group it is alive.", "3s")
    rebalance_timeout: str | float | None = option(
        "How long the group waits for members to rejoin during a rebalance (default: "
        "session_timeout).", None)
    max_poll_interval: str | float = option(
        "Longest time between two polls before the member is considered stuck.", "5m")
    request_timeout: str | float = option("Timeout of one broker request.", "40s")
    fetch_max_wait: str | float = option(
        "Longest time the broker may hold a fetch waiting for data. Kafka's 500 ms default stalls "
        "the per-batch commits behind idle long-polls (measured with tansu: 5x slower), hence shorter.",
        "50ms")


def _seconds(value: Any, what: str, mark: Any, *, positive: bool = True) -> float:
    v = parse_duration(value, mark, f"kafka source: {what}")
    if positive and v <= 0:
        raise SpecError(f"kafka source: {what} must be more than 0, got {value!r}", mark=mark)
    return v


@register("source", "kafka")
class KafkaSource(Source):
    """Consumes topics as a member of a consumer group; commits offsets after the output."""

    summary = ("Consume Kafka topics in a consumer group (realtime mode); offsets are committed only "
               "after the output acknowledged the batch.")
    Config = KafkaConfig
    modes = ("realtime",)
    examples = [
        """source:
  type: kafka
  brokers: ["127.0.0.1:9092"]
  topics: [user-events]
  group_id: pipeline-consumer
  start_offset: earliest
""",
        """source:
  type: kafka
  brokers: ["kafka-1:9092", "kafka-2:9092"]
  topics: [user-events, admin-events]
  group_id: catch-up
  format: json
  batch_size: 1000
  batch_timeout: 50ms
  idle_timeout: 30s
""",
    ]

    def __init__(self, config: KafkaConfig, ctx: Any, mark: Any) -> None:
        super().__init__(config, ctx, mark)
        if not config.brokers:
            raise SpecError("kafka source: brokers must list at least one host:port", mark=mark)
        for b in config.brokers:
            host, _, port = b.rpartition(":")
            if not host or not port.isdigit():
                raise SpecError(f"kafka source: broker {b!r} must be host:port", mark=mark)
        if not config.topics:
            raise SpecError("kafka source: topics must list at least one topic", mark=mark)
        if not config.group_id:
            raise SpecError("kafka source: group_id must not be empty", mark=mark)
        if config.batch_size < 1:
            raise SpecError("kafka source: batch_size must be at least 1", mark=mark)
        if config.max_messages is not None and config.max_messages < 1:
            raise SpecError("kafka source: max_messages must be at least 1", mark=mark)
        self.batch_timeout = _seconds(config.batch_timeout, "batch_timeout", mark, positive=False)
        self.idle_timeout = (None if config.idle_timeout is None
                             else _seconds(config.idle_timeout, "idle_timeout", mark))
        self.session_ms = int(_seconds(config.session_timeout, "session_timeout", mark) * 1000)
        self.heartbeat_ms = int(_seconds(config.heartbeat_interval, "heartbeat_interval", mark) * 1000)
        if self.heartbeat_ms >= self.session_ms:
            raise SpecError("kafka source: heartbeat_interval must be shorter than session_timeout",
                            mark=mark)
        self.rebalance_ms = (None if config.rebalance_timeout is None else
                             int(_seconds(config.rebalance_timeout, "rebalance_timeout", mark) * 1000))
        self.poll_ms = int(_seconds(config.max_poll_interval, "max_poll_interval", mark) * 1000)
        self.request_ms = int(_seconds(config.request_timeout, "request_timeout", mark) * 1000)
        self.fetch_wait_ms = max(1, int(_seconds(config.fetch_max_wait, "fetch_max_wait", mark) * 1000))
        self.consumer: Any = None
        self.messages = 0
        self.bytes = 0
        self.tombstones = 0
        self.commits = 0
        self.commit_failures = 0
        self.rebalances = 0
        self.assigned: list[str] = []
        self.last_lag: dict[str, int] = {}    #: lag per partition after the latest fetch
        self._next: dict[Any, int] = {}       #: partition -> next offset after what was yielded
        self._committed: dict[Any, int] = {}  #: partition -> offset last committed by us

    # -- consumer lifecycle ------------------------------------------------------------------------
    async def _start(self) -> Any:
        from aiokafka import AIOKafkaConsumer
        from aiokafka.errors import KafkaError

        cfg = self.config
        kw: dict[str, Any] = {}
        if self.rebalance_ms is not None:
            kw["rebalance_timeout_ms"] = self.rebalance_ms
        consumer = AIOKafkaConsumer(
            bootstrap_servers=list(cfg.brokers), group_id=cfg.group_id, client_id=cfg.client_id,
            enable_auto_commit=False, auto_offset_reset=cfg.start_offset,
            session_timeout_ms=self.session_ms, heartbeat_interval_ms=self.heartbeat_ms,
            max_poll_interval_ms=self.poll_ms, request_timeout_ms=self.request_ms,
            fetch_max_wait_ms=self.fetch_wait_ms, **kw)
        consumer.subscribe(topics=list(cfg.topics), listener=_listener(self))
        try:
            await consumer.start()
        except KafkaError as exc:
            await _quiet_stop(consumer, self.ctx)
            raise RecordError(f"kafka source: can't reach the brokers {', '.join(cfg.brokers)}: "
                              f"{exc or type(exc).__name__}",
                              hint="check brokers: (host:port of a listener the broker advertises)") from exc
        self.consumer = consumer
        return consumer

    def _assigned(self, partitions: Any) -> None:
        """Rebalance listener: new assignment (logged, so operators see the group split)."""
        self.rebalances += 1
        self.assigned = sorted(f"{tp.topic}/{tp.partition}" for tp in partitions)
        if not self.ctx.quiet and self.ctx.stderr is not None:
            self.ctx.stderr.write(f"kafka: group {self.config.group_id}: assigned "
                                  f"{', '.join(self.assigned) or 'no partitions'}\n")
            self.ctx.stderr.flush()

    def _revoked(self, partitions: Any) -> None:
        """Rebalance listener: forget positions of partitions we no longer own (never commit them)."""
        for tp in partitions:
            self._next.pop(tp, None)
            self._committed.pop(tp, None)

    async def aclose(self) -> None:
        if self.consumer is not None:
            consumer, self.consumer = self.consumer, None
            await _quiet_stop(consumer, self.ctx)  # leaves the group: the others take over at once

    # -- reading -----------------------------------------------------------------------------------
    async def batches(self) -> AsyncGenerator[Batch, None]:
        from aiokafka.errors import KafkaError

        consumer = await self._start()
        cfg = self.config
        last_message = time.monotonic()
        try:
            while cfg.max_messages is None or self.messages < cfg.max_messages:
                want = cfg.batch_size
                if cfg.max_messages is not None:
                    want = min(want, cfg.max_messages - self.messages)
                wait = POLL_CAP_S
                if self.idle_timeout is not None:
                    wait = max(0.0, min(wait, self.idle_timeout - (time.monotonic() - last_message)))
                got = await consumer.getmany(timeout_ms=int(wait * 1000), max_records=want)
                if not got:
                    self.last_lag = self.lag()
                    if self.idle_timeout is not None and time.monotonic() - last_message >= self.idle_timeout:
                        return
                    continue
                messages = [m for part in got.values() for m in part]
                if self.batch_timeout > 0 and len(messages) < want:
                    messages += await self._fill(consumer, want - len(messages))
                last_message = time.monotonic()
                batch = self._batch(messages)
                self.last_lag = self.lag()
                if batch is not None:
                    yield batch
        except KafkaError as exc:
            raise RecordError(f"kafka source: reading {', '.join(cfg.topics)} failed: "
                              f"{exc or type(exc).__name__}") from exc

    async def _fill(self, consumer: Any, missing: int) -> list[Any]:
        """More messages until `missing` arrived or batch_timeout passed."""
        out: list[Any] = []
        deadline = time.monotonic() + self.batch_timeout
        while len(out) < missing:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            got = await consumer.getmany(timeout_ms=max(1, int(left * 1000)), max_records=missing - len(out))
            out += [m for part in got.values() for m in part]
        return out

    def _batch(self, messages: list[Any]) -> Batch | None:
        """A Batch of the messages' values; positions advance for every message, tombstones too."""
        from aiokafka import TopicPartition

        lines: list[str] = []
        metas: list[dict[str, Any] | None] = []
        nxt = self._next
        for m in messages:
            nxt[TopicPartition(m.topic, m.partition)] = m.offset + 1
            v = m.value
            if v is None:  # a tombstone (compacted-topic delete marker): no record to process
                self.tombstones += 1
                continue
            self.bytes += len(v)
            text = v.decode("utf-8", "replace")
            if "\n" in text:
                # JSON allows newlines only as whitespace (inside strings they must be escaped), so
                # flattening keeps the document equal and every record on one output line
                text = text.replace("\r", " ").replace("\n", " ")
            lines.append(text)
            k = m.key
            metas.append({"kafka_topic": m.topic, "kafka_partition": m.partition, "kafka_offset": m.offset,
                          "kafka_key": None if k is None else k.decode("utf-8", "backslashreplace"),
                          "kafka_timestamp": m.timestamp})
        self.messages += len(messages)
        if not lines:
            return None
        start = self.messages - len(messages)
        index = range(start, start + len(lines)) if len(lines) == len(messages) else list(
            range(start, start + len(lines)))
        born = time.monotonic()
        if self.config.format == "lines":
            field = self.config.field
            return Batch([{field: t} for t in lines], None, index=index, metas=metas, born=born)
        return Batch(None, lines, index=index, metas=metas, born=born)

    # -- committing --------------------------------------------------------------------------------
    async def commit(self) -> None:
        """Commit the offsets after everything yielded so far (the output has acknowledged it)."""
        from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

        consumer = self.consumer
        if consumer is None:
            return
        owned = consumer.assignment()
        offsets = {tp: off for tp, off in self._next.items()
                   if tp in owned and self._committed.get(tp) != off}
        if not offsets:
            return
        try:
            await consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError) as exc:
            # the group rebalanced under us: the partitions' new owner re-reads from the last commit
            # (a duplicate at worst, which shared dedup skips), so this is not a failure of the run
            self.commit_failures += 1
            self.ctx.warn(f"kafka source: commit skipped after a rebalance: {exc}")
            return
        except KafkaError as exc:
            raise RecordError(f"kafka source: committing offsets failed: {exc or type(exc).__name__}",
                              hint="the batch was output; after a restart it is re-delivered "
                                   "and dedup skips it") from exc
        self._committed.update(offsets)
        self.commits += 1

    # -- figures -----------------------------------------------------------------------------------
    def lag(self) -> dict[str, int]:
        """Messages behind the newest, per owned partition, as of the last fetch."""
        consumer = self.consumer
        if consumer is None:
            return {}
        out = {}
        for tp in consumer.assignment():
            hw = consumer.highwater(tp)
            if hw is None:
                continue
            pos = self._next.get(tp)
            if pos is None:  # nothing yielded from it yet: where the fetcher stands (private API)
                try:
                    st = consumer._subscription.subscription.assignment.state_value(tp)
                    pos = st.position if st.has_valid_position else None
                except (AttributeError, KeyError, TypeError, AssertionError):
                    pos = None
            if pos is None:
                continue
            out[f"{tp.topic}/{tp.partition}"] = max(0, hw - pos)
        return out

    def stats(self) -> dict[str, Any]:
        lag = self.lag() if self.consumer is not None else self.last_lag
        return {"type": "kafka", "topics": list(self.config.topics), "group_id": self.config.group_id,
                "messages": self.messages, "bytes": self.bytes, "tombstones": self.tombstones,
                "commits": self.commits, "commit_failures": self.commit_failures,
                "rebalances": self.rebalances, "assigned": self.assigned,
                "positions": {f"{tp.topic}/{tp.partition}": off for tp, off in sorted(
                    self._committed.items(), key=lambda kv: (kv[0].topic, kv[0].partition))},
                "lag": sum(lag.values()), "lag_by_partition": lag}


def _listener(source: KafkaSource) -> Any:
    """An aiokafka ConsumerRebalanceListener forwarding to the source (aiokafka checks the type)."""
    from aiokafka.abc import ConsumerRebalanceListener

    class Listener(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka has no type hints
        def on_partitions_revoked(self, revoked: Any) -> None:
            source._revoked(revoked)

        def on_partitions_assigned(self, assigned: Any) -> None:
            source._assigned(assigned)

    return Listener()


async def _quiet_stop(consumer: Any, ctx: Any) -> None:
    """Stop a consumer; a failure is only a warning (the run's own outcome is what matters)."""
    try:
        await asyncio.wait_for(consumer.stop(), timeout=30)
    except Exception as exc:  # noqa: BLE001 - shutting down; the run's outcome is already decided
        ctx.warn(f"kafka source: stopping the consumer: {exc or type(exc).__name__}")
