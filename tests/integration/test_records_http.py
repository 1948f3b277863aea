"""HTTP source against a scripted local server: each pagination kind, auth kind, OAuth2 token
expiry and 401 renewal, 429 with Retry-After, 5xx retries, max_pages; the stub's callback."""
from __future__ import annotations

import base64
import json
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from clipipe.errors import RecordError
from clipipe.records.testing import run_text


class Script:
    """Server-side state the handler consults and the tests inspect."""

    def __init__(self) -> None:
        self.hits: dict[str, int] = {}
        self.tokens: list[str] = []
        self.valid_tokens: set[str] = set()
        self.token_lifetime = 3600.0
        self.token_issued: dict[str, float] = {}
        self.callbacks: list[list] = []
        self.lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    script: Script

    def log_message(self, *a) -> None:  # keep pytest output clean
        pass

    def reply(self, status: int, body, headers: dict | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        s = self.script
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        path = urllib.parse.urlsplit(self.path).path
        if path == "/token":
            form = dict(urllib.parse.parse_qsl(body.decode()))
            if form.get("grant_type") != "client_credentials" or form.get("client_secret") != "sec" \
                    or form.get("client_id") != "cid" or form.get("scope") != "read:users":
                return self.reply(401, {"error": "invalid_client"})
            with s.lock:
                tok = f"t{len(s.tokens) + 1}"
                s.tokens.append(tok)
                s.valid_tokens.add(tok)
                s.token_issued[tok] = time.monotonic()
            return self.reply(200, {"access_token": tok, "token_type": "bearer", "expires_in": s.token_lifetime})
        if path == "/callback":
            s.callbacks.append(json.loads(body))
            return self.reply(200, {"ok": True})
        if path == "/search":
            q = json.loads(body)
            return self.reply(200, {"results": [{"q": q["q"], "i": i} for i in range(3)]})
        self.reply(404, {})

    def do_GET(self) -> None:
        s = self.script
        u = urllib.parse.urlsplit(self.path)
        q = dict(urllib.parse.parse_qsl(u.query))
        path = u.path
        with s.lock:
            s.hits[path] = s.hits.get(path, 0) + 1
            hit = s.hits[path]
        auth = self.headers.get("Authorization", "")
        if path == "/next":
            page = int(q.get("page", 1))
            nxt = f"/next?page={page + 1}" if page < 3 else None
            return self.reply(200, {"data": [{"page": page, "i": i} for i in range(2)], "links": {"next": nxt}})
        if path == "/offset":
            off, lim = int(q["offset"]), int(q["limit"])
            return self.reply(200, {"items": [{"n": n} for n in range(off, min(off + lim, 25))]})
        if path == "/cursor":
            chain = {"": "c1", "c1": "c2", "c2": None}
            cur = q.get("cursor", "")
            return self.reply(200, {"result": {"rows": [{"cursor": cur or "start"}]}, "next_cursor": chain[cur]})
        if path == "/endless":
            page = int(q.get("page", 1))
            return self.reply(200, {"data": [{"page": page}], "next": f"/endless?page={page + 1}"})
        if path == "/loop":
            return self.reply(200, {"data": [{"x": 1}], "next": "/loop"})
        if path == "/basic":
            if auth != "Basic " + base64.b64encode(b"alice:s3cret").decode():
                return self.reply(401, {"error": "nope"})
            return self.reply(200, [{"who": "alice"}])
        if path == "/bearer":
            if auth != "Bearer tok123":
                return self.reply(401, {"error": "nope"})
            return self.reply(200, {"who": "bearer"})
        if path in ("/oauth", "/oauth_revoke"):
            tok = auth.removeprefix("Bearer ")
            alive = tok in s.valid_tokens and time.monotonic() - s.token_issued[tok] < s.token_lifetime
            if not alive:
                return self.reply(401, {"error": "invalid_token"})
            page = int(q.get("page", 1))
            if path == "/oauth_revoke" and page == 2 and tok == "t1":
                s.valid_tokens.discard(tok)  # revoked behind the client's back
                return self.reply(401, {"error": "invalid_token"})
            time.sleep(float(q.get("sleep", 0)))
            nxt = f"{path}?page={page + 1}&sleep={q.get('sleep', 0)}" if page < 4 else None
            return self.reply(200, {"data": [{"page": page, "token": tok}], "next": nxt})
        if path == "/r429":
            if hit == 1:
                return self.reply(429, {"error": "slow down"}, {"Retry-After": q.get("after", "1")})
            return self.reply(200, [{"ok": hit}])
        if path == "/r500":
            if hit <= 2:
                return self.reply(500, {"error": "oops"})
            return self.reply(200, [{"ok": hit}])
        self.reply(404, {"error": "no route"})


@pytest.fixture
def server():
    script = Script()
    handler = type("H", (Handler,), {"script": script})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    script.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield script
    httpd.shutdown()
    httpd.server_close()


def run(server, tmp_path, source: str, output: str = "output:\n  type: stdout\n", env: dict | None = None):
    text = f"name: h\ntype: batch\nsource:\n  type: http\n{source}{output}"
    m, out, err = run_text(text, tmp_path / "p.yaml", env={"BASE": server.base, **(env or {})})
    return m, [json.loads(x) for x in out.splitlines()], err


def test_simple_get_and_post(server, tmp_path) -> None:
    m, recs, _ = run(server, tmp_path, "  url: ${BASE}/basic\n  auth: {type: basic, username: alice, password: s3cret}\n")
    assert recs == [{"who": "alice"}]
    m, recs, _ = run(server, tmp_path, '  url: ${BASE}/search\n  method: POST\n  body: {q: "x"}\n'
                                       "  data_field: results\n")
    assert recs == [{"q": "x", "i": 0}, {"q": "x", "i": 1}, {"q": "x", "i": 2}]


def test_next_url_pagination(server, tmp_path) -> None:
    m, recs, _ = run(server, tmp_path, "  url: ${BASE}/next\n  pagination:\n    type: next_url\n"
                                       "    next_field: links.next\n    data_field: data\n")
    assert [(r["page"], r["i"]) for r in recs] == [(p, i) for p in (1, 2, 3) for i in (0, 1)]
    assert m["source"]["pages"] == 3 and not m["source"]["truncated"]


def test_offset_pagination(server, tmp_path) -> None:
    m, recs, _ = run(server, tmp_path, "  url: ${BASE}/offset\n  pagination: {type: offset, limit: 10, data_field: items}\n")
    assert [r["n"] for r in recs] == list(range(25)) and m["source"]["pages"] == 3


def test_cursor_pagination(server, tmp_path) -> None:
    m, recs, _ = run(server, tmp_path, "  url: ${BASE}/cursor\n  pagination:\n    type: cursor\n"
                                       "    cursor_field: next_cursor\n    cursor_param: cursor\n    data_field: result.rows\n")
    assert [r["cursor"] for r in recs] == ["start", "c1", "c2"]


def test_max_pages_stops_with_a_warning_or_error(server, tmp_path) -> None:
    src = "  url: ${BASE}/endless\n  pagination: {type: next_url, next_field: next, data_field: data, max_pages: 5}\n"
    m, recs, err = run(server, tmp_path, src)
    assert len(recs) == 5 and m["source"]["truncated"]
    assert "max_pages=5" in err and m["warnings"]
    with pytest.raises(RecordError, match="max_pages=5"):
        run(server, tmp_path, src + "  on_max_pages: error\n")


def test_repeating_next_url_stops(server, tmp_path) -> None:
    m, recs, err = run(server, tmp_path, "  url: ${BASE}/loop\n  pagination: {type: next_url, next_field: next, data_field: data}\n")
    assert len(recs) == 2 and "repeats" in err


def test_auth_failures(server, tmp_path) -> None:
    with pytest.raises(RecordError, match="401"):
        run(server, tmp_path, "  url: ${BASE}/basic\n  auth: {type: basic, username: alice, password: wrong}\n")
    m, recs, _ = run(server, tmp_path, "  url: ${BASE}/bearer\n  auth: {type: bearer, token: '${API_TOKEN}'}\n",
                     env={"API_TOKEN": "tok123"})
    assert recs == [{"who": "bearer"}]


OAUTH = """  auth:
    type: oauth2
    client_id: cid
    client_secret: sec
    token_url: ${BASE}/token
    scopes: ["read:users"]
  pagination: {type: next_url, next_field: next, data_field: data}
"""


def test_oauth2_token_cached(server, tmp_path) -> None:
    m, recs, _ = run(server, tmp_path, "  url: ${BASE}/oauth\n" + OAUTH)
    assert [r["page"] for r in recs] == [1, 2, 3, 4] and {r["token"] for r in recs} == {"t1"}
    assert m["source"]["token_fetches"] == 1


def test_oauth2_token_renewed_on_expiry(server, tmp_path) -> None:
    server.token_lifetime = 0.5  # renewed 0.05 s early; each page takes 0.2 s
    m, recs, _ = run(server, tmp_path, "  url: ${BASE}/oauth?sleep=0.2\n" + OAUTH)
    assert [r["page"] for r in recs] == [1, 2, 3, 4]
    assert m["source"]["token_fetches"] >= 2 and len({r["token"] for r in recs}) >= 2


def test_oauth2_renewed_once_on_401(server, tmp_path) -> None:
    m, recs, _ = run(server, tmp_path, "  url: ${BASE}/oauth_revoke\n" + OAUTH)
    assert [(r["page"], r["token"]) for r in recs] == [(1, "t1"), (2, "t2"), (3, "t2"), (4, "t2")]
    assert m["source"]["token_fetches"] == 2


def test_oauth2_bad_client(server, tmp_path) -> None:
    with pytest.raises(RecordError, match="token endpoint answered 401"):
        run(server, tmp_path, "  url: ${BASE}/oauth\n" + OAUTH.replace("client_secret: sec", "client_secret: wrong"))


def test_429_honours_retry_after(server, tmp_path) -> None:
    t = time.monotonic()
    m, recs, _ = run(server, tmp_path, "  url: ${BASE}/r429?after=1\n")
    assert recs == [{"ok": 2}] and time.monotonic() - t >= 1.0 and m["source"]["retries"] == 1


def test_retry_after_is_capped(server, tmp_path) -> None:
    t = time.monotonic()
    m, recs, _ = run(server, tmp_path, "  url: ${BASE}/r429?after=120\n  max_retry_wait: 0.3\n")
    assert recs == [{"ok": 2}] and time.monotonic() - t < 5


def test_5xx_retried_then_gives_up(server, tmp_path) -> None:
    m, recs, _ = run(server, tmp_path, "  url: ${BASE}/r500\n  retries: 3\n  backoff: 0.05\n")
    assert recs == [{"ok": 3}] and m["source"]["retries"] == 2
    server.hits.clear()
    with pytest.raises(RecordError, match="answered 500"):
        run(server, tmp_path, "  url: ${BASE}/r500\n  retries: 1\n  backoff: 0.05\n")


def test_connection_refused_is_a_record_error(tmp_path) -> None:
    with pytest.raises(RecordError, match="failed after 2 attempt"):
        run_text("source:\n  type: http\n  url: http://127.0.0.1:1/x\n  retries: 1\n  backoff: 0.01\n"
                 "output: {type: stdout}\n", tmp_path / "p.yaml")


def test_stub_callback_batches(server, tmp_path) -> None:
    m, out, err = run_text(f"""name: cb
source:
  type: http
  url: {server.base}/offset
  pagination: {{type: offset, limit: 10, data_field: items}}
output:
  type: stub
  log_level: warn
  callback:
    enabled: true
    url: {server.base}/callback
    batch_size: 7
""", tmp_path / "p.yaml")
    assert [len(b) for b in server.callbacks] == [7, 7, 7, 4]
    assert [r["n"] for b in server.callbacks for r in b] == list(range(25))
    assert m["output"]["callbacks"] == 4 and out == ""
