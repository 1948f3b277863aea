"""Print an LLM CLI-like JSON event stream (`--output-format stream-json` style) for json-events.yaml.

NDJSON events, every 25th pretty-printed over several lines and a debug line that isn't JSON now
and then, as such CLIs and their wrappers really print. `--delay` paces it like a live session.
"""
import argparse
import json
import sys
import time

ap = argparse.ArgumentParser()
ap.add_argument("--count", type=int, default=200)
ap.add_argument("--delay", type=float, default=0.0)
a = ap.parse_args()

print(json.dumps({"type": "system", "subtype": "init", "session_id": "s-1", "tools": ["Bash", "Read"]}))
for i in range(a.count):
    kind = ("text", "tool_use", "tool_result", "text", "error")[i % 5]
    if kind == "text":
        ev = {"type": "text", "index": i, "text": f"Thinking about step {i}..."}
    elif kind == "tool_use":
        ev = {"type": "tool_use", "index": i, "name": "Bash", "input": {"command": f"ls /tmp/{i}"}}
    elif kind == "tool_result":
        ev = {"type": "tool_result", "index": i, "ok": i % 3 != 0, "output": "a\nb\n"}
    else:
        ev = {"type": "error", "index": i, "message": f"rate limited at step {i}", "retry_in_s": 1}
    print(json.dumps(ev, indent=2) if i % 25 == 24 else json.dumps(ev))
    if i % 97 == 96:
        print(f"[debug] checkpoint {i}")
    if a.delay:
        sys.stdout.flush()
        time.sleep(a.delay)
print(json.dumps({"type": "result", "subtype": "success", "events": a.count}))
