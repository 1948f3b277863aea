"""Realtime mode without a broker: NDJSON files as event sources, memory and SQLite state.

Dedup (within a batch, across batches, across runs), upsert (UPDATE of an unknown entity becomes
CREATE, DELETE forgets), ids recorded only after the output acknowledged, record errors under
on_error, and every configuration mistake reported at its file:line.
"""
from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from clipipe.errors import RecordError, SpecError
from clipipe.records.testing import load_text, run_text
from clipipe.state.sqlite import SQLiteStore


def ev(i: str, t: str, e: str, **data) -> dict:
    return {"event_id": i, "event_type": t, "entity_id": e, "data": data}


def write_events(path: Path, events: list) -> None:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in events))


def pipeline(storage: str = "memory", extra: str = "", steps: str = "", output: str = "{type: stdout}",
             on_error: str = "stop") -> str:
    return f"""name: rt
type: realtime
on_error: {on_error}
source: {{type: file, path: events.ndjson}}
realtime:
  id_field: event_id
  event_type_field: event_type
  dedup_storage: {storage}
{extra}steps: [{steps}]
output: {output}
"""


def out_records(out: str) -> list[dict]:
    return [json.loads(x) for x in out.splitlines() if x.strip()]


def test_dedup_and_upsert_in_one_batch(tmp_path) -> None:
    write_events(tmp_path / "events.ndjson", [
        ev("e1", "UPDATE", "u1", v=1),   # unknown entity: becomes CREATE
        ev("e2", "UPDATE", "u1", v=2),   # now known: stays UPDATE
        ev("e1", "UPDATE", "u1", v=1),   # duplicate id in the same batch
        ev("e3", "CREATE", "u2", v=3),
        ev("e4", "DELETE", "u1", v=4),   # forgets u1 ...
        ev("e5", "update", "u1", v=5),   # ... so this one is a create again (case kept)
    ])
    m, out, _ = run_text(pipeline(), tmp_path / "p.yaml")
    recs = out_records(out)
    assert [(r["event_id"], r["event_type"]) for r in recs] == [
        ("e1", "CREATE"), ("e2", "UPDATE"), ("e3", "CREATE"), ("e4", "DELETE"), ("e5", "create")]
    rt = m["realtime"]
    assert rt["duplicates_skipped"] == 1 and rt["upserts_converted"] == 2
    assert rt["types"] == {"CREATE": 3, "UPDATE": 1, "DELETE": 1}
    assert m["mode"] == "realtime" and m["status"] == "ok" and m["records_out"] == 5


def test_upsert_metadata_visible_to_mappings(tmp_path) -> None:
    write_events(tmp_path / "events.ndjson", [ev("e1", "UPDATE", "u1")])
    steps = '{name: m, transform: "root = this\\nroot.was = meta(\\"realtime_original_type\\")"}'
    _, out, _ = run_text(pipeline(steps=steps), tmp_path / "p.yaml")
    assert out_records(out)[0]["was"] == "UPDATE"


def test_dedup_across_runs_with_sqlite(tmp_path) -> None:
    store = SQLiteStore(tmp_path / "state.db")
    write_events(tmp_path / "events.ndjson", [ev("a", "CREATE", "u1"), ev("b", "UPDATE", "u1")])
    m1, out1, _ = run_text(pipeline("sqlite"), tmp_path / "p.yaml", store=store)
    assert len(out_records(out1)) == 2
    write_events(tmp_path / "events.ndjson", [ev("a", "CREATE", "u1"), ev("b", "UPDATE", "u1"),
                                              ev("c", "UPDATE", "u1")])
    m2, out2, _ = run_text(pipeline("sqlite"), tmp_path / "p.yaml", store=store)
    recs = out_records(out2)
    assert [(r["event_id"], r["event_type"]) for r in recs] == [("c", "UPDATE")]  # u1 known from run 1
    assert m2["realtime"]["duplicates_skipped"] == 2 and m2["realtime"]["upserts_converted"] == 0


def test_memory_store_forgets_between_runs(tmp_path) -> None:
    write_events(tmp_path / "events.ndjson", [ev("a", "CREATE", "u1")])
    run_text(pipeline("memory"), tmp_path / "p.yaml")
    _, out, _ = run_text(pipeline("memory"), tmp_path / "p.yaml")
    assert len(out_records(out)) == 1


def test_filtered_events_are_still_recorded(tmp_path) -> None:
    """An event a step drops was processed: a re-delivery is a duplicate, and its entity is known."""
    store = SQLiteStore(tmp_path / "state.db")
    write_events(tmp_path / "events.ndjson", [ev("a", "CREATE", "u1", keep=False)])
    steps = "{name: f, filter: '.data.keep'}"
    _, out, _ = run_text(pipeline("sqlite", steps=steps), tmp_path / "p.yaml", store=store)
    assert out == ""
    write_events(tmp_path / "events.ndjson", [ev("a", "CREATE", "u1", keep=False),
                                              ev("b", "UPDATE", "u1", keep=True)])
    m, out, _ = run_text(pipeline("sqlite", steps=steps), tmp_path / "p.yaml", store=store)
    assert [(r["event_id"], r["event_type"]) for r in out_records(out)] == [("b", "UPDATE")]
    assert m["realtime"]["duplicates_skipped"] == 1


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again: nothing listens there


def test_failed_output_records_nothing(tmp_path) -> None:
    """The output never acknowledged: no id is recorded, so the next run processes them again."""
    store = SQLiteStore(tmp_path / "state.db")
    write_events(tmp_path / "events.ndjson", [ev("a", "CREATE", "u1"), ev("b", "UPDATE", "u1")])
    bad = (f"{{type: stub, log_level: warn, callback: {{enabled: true, retries: 0, timeout: 2, "
           f"url: 'http://127.0.0.1:{_closed_port()}/x'}}}}")
    with pytest.raises(RecordError, match="callback"):
        run_text(pipeline("sqlite", output=bad), tmp_path / "p.yaml", store=store)
    m, out, _ = run_text(pipeline("sqlite"), tmp_path / "p.yaml", store=store)
    assert [(r["event_id"], r["event_type"]) for r in out_records(out)] == [("a", "CREATE"), ("b", "UPDATE")]
    assert m["realtime"]["duplicates_skipped"] == 0


def test_missing_id_stops_or_skips(tmp_path) -> None:
    write_events(tmp_path / "events.ndjson", [ev("a", "CREATE", "u1"), {"event_type": "CREATE"},
                                              ev("c", "CREATE", "u3")])
    with pytest.raises(RecordError, match="no usable id in 'event_id'"):
        run_text(pipeline(), tmp_path / "p.yaml")
    m, out, err = run_text(pipeline(on_error="skip"), tmp_path / "p.yaml")
    assert [r["event_id"] for r in out_records(out)] == ["a", "c"]
    assert m["errors"] == 1 and "record 1 skipped" in err


def test_unknown_event_type_is_a_record_error(tmp_path) -> None:
    write_events(tmp_path / "events.ndjson", [ev("a", "UPSERT", "u1")])
    with pytest.raises(RecordError, match="expected CREATE, UPDATE or DELETE"):
        run_text(pipeline(), tmp_path / "p.yaml")


def test_bad_json_lines_follow_on_error(tmp_path) -> None:
    write_events(tmp_path / "events.ndjson", [ev("a", "CREATE", "u1"), "{not json", ev("b", "CREATE", "u2")])
    with pytest.raises(RecordError, match="invalid JSON"):
        run_text(pipeline(), tmp_path / "p.yaml")
    m, out, _ = run_text(pipeline(on_error="skip"), tmp_path / "p.yaml")
    assert [r["event_id"] for r in out_records(out)] == ["a", "b"] and m["errors"] == 1


def test_dotted_fields_and_dedup_only(tmp_path) -> None:
    write_events(tmp_path / "events.ndjson", [{"meta": {"id": 1}}, {"meta": {"id": 1}}, {"meta": {"id": 2}}])
    text = ("type: realtime\nsource: {type: file, path: events.ndjson}\nrealtime: {id_field: meta.id, "
            "dedup_storage: memory}\noutput: {type: stdout}\n")
    m, out, _ = run_text(text, tmp_path / "p.yaml")
    assert [r["meta"]["id"] for r in out_records(out)] == [1, 2] and m["realtime"]["duplicates_skipped"] == 1


# -- configuration errors: one SpecError, at the right line ---------------------------------------

KAFKA = "source: {type: kafka, brokers: ['127.0.0.1:9092'], topics: [t], group_id: g}\n"
FILE = "source: {type: file, path: x}\n"
RT = "realtime: {id_field: id}\n"
OUT = "output: {type: stub}\n"

CONFIG_ERRORS = [
    ("kafka in batch", "type: batch\n" + KAFKA + OUT, "needs type: realtime", 2),
    ("realtime key in batch", "type: batch\n" + FILE + RT + OUT, "need type: realtime", 3),
    ("no realtime block", "type: realtime\n" + FILE + OUT, "needs a realtime: block", 1),
    ("no id_field", "type: realtime\n" + FILE + "realtime: {dedup_storage: memory}\n" + OUT,
     "missing required key 'id_field'", 3),
    ("unknown realtime key", "type: realtime\n" + FILE + "realtime:\n  id_field: id\n  dedup_tll: 1h\n" + OUT,
     "unknown key 'dedup_tll'", 5),
    ("bad storage", "type: realtime\n" + FILE + "realtime:\n  id_field: id\n  dedup_storage: etcd\n" + OUT,
     "expected one of 'memory', 'sqlite', 'redis'", 5),
    ("bad ttl", "type: realtime\n" + FILE + "realtime:\n  id_field: id\n  dedup_ttl: forever\n" + OUT,
     "is not a duration", 5),
    ("zero ttl", "type: realtime\n" + FILE + "realtime:\n  id_field: id\n  dedup_ttl: 0s\n" + OUT,
     "must be more than 0", 5),
    ("bad redis url", "type: realtime\n" + FILE + "realtime:\n  id_field: id\n  dedup_storage: redis\n"
     "  redis_url: http://u:secret@host/\n" + OUT, "redis_url must start with", 6),
    ("empty path part", "type: realtime\n" + FILE + "realtime:\n  id_field: a..b\n" + OUT,
     "dotted path", 4),
    ("file output", "type: realtime\n" + FILE + RT + "output:\n  type: file\n  path: out.ndjson\n",
     "only finishes at the end", 5),
    ("kafka no port", "type: realtime\nsource:\n  type: kafka\n  brokers: [kafka]\n  topics: [t]\n"
     "  group_id: g\n" + RT + OUT, "must be host:port", 3),
    ("kafka no topics", "type: realtime\nsource:\n  type: kafka\n  brokers: ['k:1']\n  group_id: g\n" + RT + OUT,
     "missing required key 'topics'", 3),
    ("kafka bad offset", "type: realtime\nsource:\n  type: kafka\n  brokers: ['k:1']\n  topics: [t]\n"
     "  group_id: g\n  start_offset: newest\n" + RT + OUT, "expected one of 'earliest', 'latest'", 7),
    ("kafka heartbeat", "type: realtime\nsource:\n  type: kafka\n  brokers: ['k:1']\n  topics: [t]\n"
     "  group_id: g\n  session_timeout: 2s\n  heartbeat_interval: 5s\n" + RT + OUT,
     "heartbeat_interval must be shorter", 3),
    ("kafka idle", "type: realtime\nsource:\n  type: kafka\n  brokers: ['k:1']\n  topics: [t]\n"
     "  group_id: g\n  idle_timeout: soon\n" + RT + OUT, "is not a duration", 3),
    ("kafka batch size", "type: realtime\nsource:\n  type: kafka\n  brokers: ['k:1']\n  topics: [t]\n"
     "  group_id: g\n  batch_size: 0\n" + RT + OUT, "batch_size must be at least 1", 3),
]


@pytest.mark.parametrize("text, message, line", [c[1:] for c in CONFIG_ERRORS], ids=[c[0] for c in CONFIG_ERRORS])
def test_config_errors(tmp_path, text: str, message: str, line: int) -> None:
    with pytest.raises(SpecError) as ei:
        load_text(text, tmp_path / "p.yaml")
    assert message in str(ei.value)
    assert ei.value.mark is not None and ei.value.mark.file.endswith("p.yaml") and ei.value.mark.line == line
    assert "secret" not in str(ei.value)


def test_kafka_source_explains_itself() -> None:
    from clipipe.records import explain
    text = explain("source", "kafka")
    assert "group_id" in text and "start_offset" in text and "committed only after the output" in text


def test_realtime_block_explains_itself_and_its_example_loads(tmp_path) -> None:
    from clipipe.records import realtime
    text = realtime.explain()
    assert "id_field" in text and "dedup_storage" in text and "(required)" in text
    pipe = load_text(realtime.EXAMPLE + FILE + OUT, tmp_path / "p.yaml")
    assert pipe.realtime.cfg.dedup_storage == "redis" and pipe.realtime.ttl == 86400
