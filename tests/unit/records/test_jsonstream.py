"""The JSON message stream parser: any layout, any chunking, garbage and truncation, bounded size."""
from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clipipe.records.jsonstream import StreamParser, parse_all

# -- values and layouts --------------------------------------------------------------------------

scalars = (st.none() | st.booleans() | st.integers(min_value=-(2 ** 63), max_value=2 ** 63 - 1)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=20)
LAYOUTS = [
    lambda v: json.dumps(v, separators=(",", ":"), ensure_ascii=False),
    lambda v: json.dumps(v),
    lambda v: json.dumps(v, indent=2, ensure_ascii=False),
    lambda v: json.dumps(v, indent=0),
    lambda v: json.dumps(v, indent="\t"),
]


def _join(vals: list, layouts: list[int], glue: list[str]) -> bytes:
    """The values in their layouts; containers may sit back to back on one line, scalars may not."""
    out = []
    for i, v in enumerate(vals):
        text = LAYOUTS[layouts[i % len(layouts)]](v)
        if i:
            prev_open = isinstance(vals[i - 1], (dict, list)) and isinstance(v, (dict, list))
            out.append(glue[i % len(glue)] if prev_open else "\n")
        out.append(text)
    return "".join(out).encode()


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:])]


def _parse(chunks: list[bytes], max_bytes: int = 1 << 20) -> tuple[list, list]:
    p = StreamParser(max_bytes)
    got, errs = [], []
    for c in chunks:
        r = p.feed(c)
        got += r.values
        errs += r.errors
    r = p.finish()
    return got + r.values, errs + r.errors


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(values, max_size=12), st.lists(st.integers(0, 4), min_size=1, max_size=5),
       st.lists(st.sampled_from(["\n", "", " ", "\r\n", "\n\n  "]), min_size=1, max_size=4),
       st.lists(st.integers(0, 10 ** 6), max_size=30), st.booleans())
def test_any_values_any_layout_any_chunking(vals, layouts, glue, cuts, final_newline) -> None:
    data = _join(vals, layouts, glue) + (b"\n" if final_newline else b"")
    got, errs = _parse(_chunks(data, cuts))
    assert errs == []
    assert got == vals


garbage_lines = st.text(st.characters(blacklist_categories=["Cs", "Cc"]), min_size=1, max_size=30).filter(
    lambda s: s.strip() != "" and s.lstrip()[0] not in '{["-0123456789tfn')


@settings(max_examples=200, deadline=None)
@given(st.lists(values, min_size=1, max_size=8), st.lists(garbage_lines, min_size=1, max_size=5),
       st.lists(st.integers(0, 10 ** 6), max_size=20), st.integers(0, 4), st.randoms())
def test_garbage_between_values_is_skipped_and_counted(vals, garbage, cuts, layout, rnd) -> None:
    pieces: list[tuple[str, object]] = [("value", v) for v in vals] + [("garbage", g) for g in garbage]
    rnd.shuffle(pieces)
    text = "\n".join(LAYOUTS[layout](p) if kind == "value" else p for kind, p in pieces) + "\n"
    data = text.encode()
    got, errs = _parse(_chunks(data, cuts))
    assert got == [p for kind, p in pieces if kind == "value"]
    assert len(errs) == len(garbage)
    lines = text.split("\n")
    for e in errs:  # each error points at its garbage line, by line number and byte offset
        assert lines[e.line - 1].strip() in {g.strip() for g in garbage}
        assert data[e.offset:].startswith(lines[e.line - 1].lstrip().encode()[:10])


# -- examples: what an LLM CLI's stream looks like, and how it goes wrong -------------------------

EVENTS = [{"type": "system", "session": "s1"}, {"type": "text", "text": "héllo"},
          {"type": "tool_use", "name": "ls", "input": {"path": "/"}}, {"type": "result", "ok": True}]


def ndjson(events: list) -> bytes:
    return b"".join(json.dumps(e, ensure_ascii=False).encode() + b"\n" for e in events)


def test_ndjson_keeps_texts_for_unchanged_records() -> None:
    p = StreamParser()
    r = p.feed(ndjson(EVENTS))
    assert r.values == EVENTS and r.texts == [json.dumps(e, ensure_ascii=False) for e in EVENTS] and r.errors == []
    assert p.messages == 4 and p.bytes == len(ndjson(EVENTS))


def test_pretty_values_have_no_texts() -> None:
    r = StreamParser().feed(json.dumps(EVENTS[2], indent=2).encode() + b"\n")
    r2 = StreamParser().finish()
    assert r.values == [EVENTS[2]] and r.texts is None and r2.values == []


def test_utf8_split_across_chunks() -> None:
    data = ndjson(EVENTS)
    cut = data.index("é".encode()) + 1  # between the two bytes of é
    got, errs = _parse([data[:cut], data[cut:]])
    assert got == EVENTS and errs == []


def test_several_values_per_line_and_crlf() -> None:
    got, errs = parse_all(b'{"a":1}{"b":2} [3] "x" 4\r\n{"c":\r\n 5}\r\n')
    assert got == [{"a": 1}, {"b": 2}, [3], "x", 4, {"c": 5}] and errs == []


def test_garbage_reports_line_offset_and_snippet() -> None:
    data = b'{"a":1}\nWARN: retrying\n{"b":2}\n[INFO] started\n{"c":3}\n'
    got, errs = parse_all(data, chunk=5)
    assert got == [{"a": 1}, {"b": 2}, {"c": 3}]
    assert [(e.line, e.offset, e.snippet) for e in errs] == [(2, 8, "WARN: retrying"), (4, 31, "[INFO] started")]
    assert errs[0].reason == "not JSON" and errs[1].reason.startswith("invalid JSON")


def test_producer_died_mid_object() -> None:
    data = ndjson(EVENTS[:2]) + b'{"type": "tool_use", "input": {"pa'
    got, errs = parse_all(data, chunk=7)
    assert got == EVENTS[:2]
    assert len(errs) == 1 and errs[0].line == 3 and errs[0].offset == len(ndjson(EVENTS[:2]))


def test_truncated_line_then_more_messages_loses_nothing_after_it() -> None:
    # cut after a complete token: the open value swallows the next lines until one can't continue it
    data = ndjson(EVENTS[:1]) + b'{"type": "tool_use", "input": {"path": 1\n' + ndjson(EVENTS[1:])
    for chunk in (1, 9, 1 << 16):
        got, errs = parse_all(data, chunk=chunk)
        assert got == EVENTS and [(e.line, e.reason) for e in errs] == [(2, "message cut short")], chunk
    # cut inside a string: the line is broken at once
    data = ndjson(EVENTS[:1]) + b'{"type": "text", "text": "hel\n' + ndjson(EVENTS[1:])
    got, errs = parse_all(data, chunk=3)
    assert got == EVENTS and [(e.line, e.reason) for e in errs] == [(2, "unterminated string")]


def test_open_bracket_garbage_swallowing_pretty_messages_is_rescanned_at_the_end() -> None:
    # `{"a": [` followed by pretty objects is a valid prefix until the stream ends: then the lines
    # it swallowed are scanned again and the messages inside come out
    data = b'{"a": [\n' + b"\n".join(json.dumps(e, indent=2).encode() for e in EVENTS) + b"\n"
    got, errs = parse_all(data, chunk=11)
    assert got == EVENTS and [e.reason for e in errs] == ["stream ended inside a message"]


def test_oversized_messages_are_skipped_with_bounded_memory() -> None:
    big_line = b'{"blob": "' + b"x" * 5000 + b'"}\n'
    big_pretty = json.dumps({"blob": ["y" * 100] * 60}, indent=2).encode() + b"\n"
    data = ndjson(EVENTS[:1]) + big_line + ndjson(EVENTS[1:2]) + big_pretty + ndjson(EVENTS[2:])
    for chunk in (1, 64, 1 << 16):
        p = StreamParser(1000)
        got, errs, peak = [], [], 0
        for i in range(0, len(data), chunk):
            r = p.feed(data[i:i + chunk])
            got += r.values
            errs += r.errors
            peak = max(peak, len(p._tail) + len(p._pend))
        got += p.finish().values
        assert got == EVENTS, chunk
        assert [e.line for e in errs] == [2, 4] and all("max_message_bytes" in e.reason for e in errs)
        assert peak <= 1000 + chunk + 200  # the limit plus one read plus a line


def test_limit_counts_bytes_of_a_single_line_without_newline() -> None:
    p = StreamParser(100)
    assert p.feed(b"{" + b'"k": 1, ' * 50).errors[0].reason.startswith("message larger")
    assert p.feed(b'"z": 2}\n{"ok": 1}\n').values == [{"ok": 1}]


@pytest.mark.parametrize("text", [b"", b"\n\n   \n", b"   "])
def test_empty_input(text: bytes) -> None:
    assert parse_all(text) == ([], [])
