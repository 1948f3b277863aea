"""The message buffer: each policy drops exactly the right messages; block really blocks the producer."""
from __future__ import annotations

import asyncio
import threading

import pytest

from clipipe.records.buffer import MessageBuffer


def put_runs(buf: MessageBuffer, start: int, stop: int, run: int, born: float = 0.0) -> None:
    for i in range(start, stop, run):
        vals = list(range(i, min(stop, i + run)))
        buf.put(vals, [str(v) for v in vals], 10 * len(vals), born)


def drain(buf: MessageBuffer) -> list:
    got = []
    while True:
        t = buf.take(1000)
        if not t or not t.values:
            return got
        assert t.texts == [str(v) for v in t.values]  # texts stay aligned with their values
        got += t.values


def test_drop_newest_keeps_the_first_and_drops_the_rest() -> None:
    buf = MessageBuffer(4, "drop_newest")
    put_runs(buf, 0, 10, 3)
    assert drain(buf) == [0, 1, 2, 3]
    put_runs(buf, 10, 13, 1)
    assert drain(buf) == [10, 11, 12]
    m = buf.metrics
    assert (m.offered, m.messages_in, m.messages_out, m.dropped_newest, m.dropped_oldest) == (13, 7, 7, 6, 0)
    assert m.high_water_mark == 4 and m.backpressure_events == 0


def test_drop_oldest_keeps_the_freshest() -> None:
    buf = MessageBuffer(4, "drop_oldest")
    put_runs(buf, 0, 10, 3)
    assert drain(buf) == [6, 7, 8, 9]
    buf.put(list(range(20, 30)), [str(v) for v in range(20, 30)], 100, 0.0)  # one run bigger than the buffer
    assert drain(buf) == [26, 27, 28, 29]
    m = buf.metrics
    assert (m.dropped_oldest, m.dropped_newest, m.messages_out) == (12, 0, 8)


def test_byte_bound() -> None:
    buf = MessageBuffer(1000, "drop_newest", max_bytes=100)
    buf.put([1], ["1"], 60, 0.0)
    buf.put([2], ["2"], 60, 0.0)   # 60 < 100 held: taken (now 120)
    buf.put([3], ["3"], 60, 0.0)   # over: dropped
    assert drain(buf) == [1, 2] and buf.metrics.dropped_newest == 1
    big = MessageBuffer(10, "block", max_bytes=100)
    big.put([1], ["1"], 500, 0.0)  # one run over the bound goes into an empty buffer (no deadlock)
    assert drain(big) == [1]
    old = MessageBuffer(1000, "drop_oldest", max_bytes=100)
    for i in range(5):
        old.put([i], [str(i)], 60, 0.0)
    assert drain(old) == [4] and old.metrics.dropped_oldest == 4


def test_block_blocks_the_producer_until_the_consumer_takes() -> None:
    buf = MessageBuffer(5, "block")
    done = threading.Event()

    def producer() -> None:
        put_runs(buf, 0, 12, 4)
        done.set()

    t = threading.Thread(target=producer)
    t.start()
    got: list = []
    while len(got) < 12:
        # the producer can't finish while 12 messages don't fit: it must be waiting on us
        assert not done.is_set() or len(got) + len(buf) == 12
        while len(buf) < min(5, 12 - len(got)) and not done.is_set():
            done.wait(0.01)
        assert len(buf) <= 5
        t_ = buf.take(2)
        got += t_.values if t_ else []
    t.join()
    m = buf.metrics
    assert got == list(range(12)) and m.as_dict()["dropped"] == 0
    assert m.backpressure_events >= 1 and m.high_water_mark == 5 and m.blocked_s > 0


def test_block_producer_still_blocked_without_a_consumer() -> None:
    buf = MessageBuffer(3, "block")
    t = threading.Thread(target=put_runs, args=(buf, 0, 5, 5))
    t.start()
    t.join(0.3)
    assert t.is_alive() and len(buf) == 3  # stuck: it only got 3 of its 5 messages in
    buf.cancel()  # the consumer goes away: the producer is released and refused
    t.join(5)
    assert not t.is_alive() and buf.put([9], None, 1, 0.0) is False


def test_slow_consumer_detected_with_the_clock() -> None:
    now = [100.0]
    buf = MessageBuffer(10, "drop_newest", high_water=0.8, slow_after=5.0, clock=lambda: now[0])
    put_runs(buf, 0, 8, 8)           # 8 of 10: at the mark
    now[0] += 4.9
    buf.put([8], None, 1, 0.0)
    assert buf.warnings() == [] and not buf.slow
    now[0] += 0.2
    buf.put([9], None, 1, 0.0)
    w = buf.warnings()
    assert buf.slow and len(w) == 1 and "slow consumer" in w[0] and buf.metrics.slow_consumer_events == 1
    buf.take(5)                      # below the mark: the episode ends
    assert not buf.slow
    put_runs(buf, 20, 25, 5)
    now[0] += 6
    buf.put([30], None, 1, 0.0)
    assert buf.metrics.slow_consumer_events == 2


def test_adaptive_growth_absorbs_a_burst_and_shrinks_back() -> None:
    buf = MessageBuffer(2, "drop_newest", max_size=8)
    put_runs(buf, 0, 10, 1)
    m = buf.metrics
    assert (buf.capacity, m.grown, m.dropped_newest) == (8, 2, 2)
    assert drain(buf) == list(range(8)) and buf.capacity == 4 and m.shrunk == 1


def test_adaptive_growth_stops_for_a_slow_consumer() -> None:
    now = [0.0]
    buf = MessageBuffer(4, "drop_newest", max_size=64, slow_after=1.0, clock=lambda: now[0])
    put_runs(buf, 0, 4, 4)
    now[0] += 2
    buf.put([4], None, 1, 0.0)  # flagged slow on this put, before growing
    assert buf.slow
    put_runs(buf, 5, 40, 5)
    assert buf.capacity <= 8 and buf.metrics.dropped_newest > 0


def test_async_get_waits_for_the_producer_and_ends_on_close() -> None:
    buf = MessageBuffer(100, "block")

    async def consume() -> list:
        got = []
        while True:
            t = await buf.get(7, timeout=5)
            if t is None:
                return got
            got += t.values
            assert sum(n for n, _ in t.born) == len(t.values)

    async def main() -> list:
        task = asyncio.create_task(consume())
        await asyncio.sleep(0)
        th = threading.Thread(target=lambda: (put_runs(buf, 0, 50, 3, born=1.0), buf.close()))
        th.start()
        got = await task
        th.join()
        return got

    assert asyncio.run(main()) == list(range(50))


def test_async_get_with_a_producer_blocked_mid_run() -> None:
    buf = MessageBuffer(4, "block")

    async def main() -> list:
        th = threading.Thread(target=lambda: (put_runs(buf, 0, 30, 10), buf.close()))
        th.start()  # each run of 10 can't fit: the producer blocks with part of it in
        got = []
        while (t := await buf.get(3)) is not None:
            got += t.values
        th.join()
        return got

    assert asyncio.run(main()) == list(range(30))
    assert buf.metrics.backpressure_events >= 1


def test_get_timeout_returns_empty() -> None:
    buf = MessageBuffer(10)
    t = asyncio.run(buf.get(10, timeout=0.01))
    assert t is not None and t.values == []


@pytest.mark.parametrize("kw", [{"policy": "lifo"}, {"size": 0}, {"max_size": 1, "size": 2}, {"high_water": 0}])
def test_bad_settings(kw) -> None:
    with pytest.raises(ValueError):
        MessageBuffer(**kw)
