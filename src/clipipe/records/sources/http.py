"""The `http` source: GET/POST a JSON API, follow its pagination, authenticate, retry politely.

Pagination kinds: `next_url` (the response names the next page's URL), `offset` (offset/limit query
parameters; stops at a short page), `cursor` (the response carries a cursor sent back as a parameter).
`max_pages` caps the walk: reaching it while the API still offers more is reported (a warning, or an
error with `on_max_pages: error`); a next URL or cursor that repeats stops the walk too. Retries
(429 and 5xx, connection errors) back off exponentially and honour Retry-After, capped at
`max_retry_wait`. OAuth2 client-credentials tokens are cached, renewed before they expire and once
more when the API answers 401.
"""
from __future__ import annotations

import asyncio
import email.utils
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any, AsyncGenerator, Literal

import httpx

from clipipe.errors import RecordError, SpecError
from clipipe.records.core import Batch, Source
from clipipe.records.registry import option, register

_RETRY_STATUS = {429, 500, 502, 503, 504}


@dataclass
class PaginationConfig:
    type: Literal["next_url", "offset", "cursor"] = option("How the API pages.", examples=["next_url"])
    data_field: str | None = option("Dotted path of the records in each response (default: the "
                                    "response itself, a list or one object).", None, examples=["data"])
    max_pages: int = option("Stop after this many pages (guards against endless paging).", 100)
    next_field: str = option("next_url: dotted path of the next page's URL (null/empty = last page).",
                             "next")
    limit: int = option("offset: page size asked for.", 100)
    offset_param: str = option("offset: query parameter carrying the offset.", "offset")
    limit_param: str = option("offset: query parameter carrying the page size.", "limit")
    start_offset: int = option("offset: the first offset.", 0)
    cursor_field: str = option("cursor: dotted path of the next cursor in the response.", "next_cursor")
    cursor_param: str = option("cursor: query parameter that sends the cursor back.", "cursor")


@dataclass
class AuthConfig:
    type: Literal["basic", "bearer", "oauth2"] = option("Authentication scheme.")
    username: str | None = option("basic: user name.", None)
    password: str | None = option("basic: password.", None)
    token: str | None = option("bearer: the token.", None)
    client_id: str | None = option("oauth2: client id.", None)
    client_secret: str | None = option("oauth2: client secret.", None)
    token_url: str | None = option("oauth2: the token endpoint (client credentials grant).", None)
    scopes: list[str] = option("oauth2: scopes asked for.", factory=list)
    client_auth: Literal["body", "basic"] = option(
        "oauth2: send the client credentials in the form body or as HTTP basic auth.", "body")


@dataclass
class HTTPConfig:
    url: str = option("The API endpoint.", examples=["https://api.example.com/users"])
    method: Literal["GET", "POST"] = option("HTTP method.", "GET")
    headers: dict[str, str] = option("Request headers.", factory=dict)
    query: dict[str, Any] = option("Query parameters added to the first request.", factory=dict)
    body: Any = option("POST body: a mapping or list is sent as JSON, a string as is.", None)
    timeout: float = option("Seconds per request.", 30.0)
    retries: int = option("Retries after a 429, a 5xx or a connection error.", 3)
    backoff: float = option("First retry delay in seconds (doubles each time).", 0.5)
    max_retry_wait: float = option("Longest wait between retries, Retry-After included.", 60.0)
    data_field: str | None = option("Dotted path of the records when there is no pagination.", None)
    pagination: PaginationConfig | None = option("How to walk through pages.", None)
    auth: AuthConfig | None = option("Authentication.", None)
    on_max_pages: Literal["warn", "error"] = option(
        "What reaching max_pages with pages left does.", "warn")
    verify_tls: bool = option("Verify the server's TLS certificate.", True)


def dotted(value: Any, path: str | None) -> Any:
    """The value at a dotted path (`a.b.0`), or None when any part is missing."""
    if not path:
        return value
    for part in path.split("."):
        if isinstance(value, dict):
            value = value.get(part)
        elif isinstance(value, list) and part.lstrip("-").isdigit() and -len(value) <= int(part) < len(value):
            value = value[int(part)]
        else:
            return None
    return value


class OAuth2Token:
    """A client-credentials token: fetched on first use, reused, renewed before expiry or on 401."""

    def __init__(self, cfg: AuthConfig, source: HTTPSource) -> None:
        self.cfg = cfg
        self.source = source
        self.token: str | None = None
        self.expires_at = 0.0
        self.fetches = 0

    async def get(self, client: httpx.AsyncClient, force: bool = False) -> str:
        if force or self.token is None or time.monotonic() >= self.expires_at:
            await self.fetch(client)
        assert self.token is not None
        return self.token

    async def fetch(self, client: httpx.AsyncClient) -> None:
        cfg = self.cfg
        form = {"grant_type": "client_credentials"}
        if cfg.scopes:
            form["scope"] = " ".join(cfg.scopes)
        auth = None
        if cfg.client_auth == "basic":
            auth = httpx.BasicAuth(cfg.client_id or "", cfg.client_secret or "")
        else:
            form["client_id"] = cfg.client_id or ""
            form["client_secret"] = cfg.client_secret or ""
        resp = await self.source.send(client, "POST", cfg.token_url or "", data=form, auth=auth,
                                      what="oauth2 token endpoint")
        if resp.status_code != 200:
            raise RecordError(f"http source: the oauth2 token endpoint answered {resp.status_code}: "
                              f"{resp.text[:200]}")
        try:
            body = resp.json()
            self.token = str(body["access_token"])
        except (ValueError, KeyError, TypeError) as exc:
            raise RecordError("http source: the oauth2 token endpoint sent no access_token") from exc
        lifetime = float(body.get("expires_in") or 3600)
        # renew a little early: 10% of the lifetime, at most 30 s, so a token never expires in flight
        self.expires_at = time.monotonic() + lifetime - min(30.0, lifetime * 0.1)
        self.fetches += 1


@register("source", "http")
class HTTPSource(Source):
    """Reads records from a JSON HTTP API."""

    summary = "Read records from a JSON HTTP API (GET/POST), with pagination, auth and retries."
    Config = HTTPConfig
    examples = [
        """source:
  type: http
  url: https://api.example.com/users
  method: GET
  headers:
    Content-Type: application/json
""",
        """source:
  type: http
  url: https://api.example.com/users
  pagination:
    type: next_url
    next_field: next_page_url
    data_field: data
    max_pages: 100
""",
        """source:
  type: http
  url: https://api.example.com/users
  pagination: {type: offset, limit: 50, data_field: items}
  auth:
    type: oauth2
    client_id: my-client
    client_secret: my-secret
    token_url: https://auth.example.com/token
    scopes: ["read:users"]
""",
    ]

    def __init__(self, config: HTTPConfig, ctx: Any, mark: Any) -> None:
        super().__init__(config, ctx, mark)
        a = config.auth
        if a is not None:
            need = {"basic": ("username",), "bearer": ("token",),
                    "oauth2": ("client_id", "client_secret", "token_url")}[a.type]
            for f in need:
                if getattr(a, f) in (None, ""):
                    raise SpecError(f"http source: auth type {a.type} needs {f}", mark=mark)
        if config.pagination is not None and config.pagination.max_pages < 1:
            raise SpecError("http source: max_pages must be at least 1", mark=mark)
        self.oauth = OAuth2Token(a, self) if a is not None and a.type == "oauth2" else None
        self.pages = 0
        self.requests = 0
        self.retried = 0
        self.records = 0
        self.truncated = False

    # -- requests ----------------------------------------------------------------------------------
    async def send(self, client: httpx.AsyncClient, method: str, url: str, *, what: str = "",
                   **kw: Any) -> httpx.Response:
        """One request with retries on 429/5xx/connection errors; returns the final response."""
        cfg = self.config
        attempt = 0
        while True:
            self.requests += 1
            try:
                resp = await client.request(method, url, **kw)
            except httpx.HTTPError as exc:
                if attempt >= cfg.retries:
                    raise RecordError(f"http source: {method} {url} failed after {attempt + 1} "
                                      f"attempt(s): {exc or type(exc).__name__}") from exc
                await self._sleep(self._backoff(attempt))
            else:
                if resp.status_code not in _RETRY_STATUS or attempt >= cfg.retries:
                    return resp
                await self._sleep(self._retry_after(resp) or self._backoff(attempt))
            attempt += 1
            self.retried += 1

    def _backoff(self, attempt: int) -> float:
        return min(self.config.max_retry_wait, self.config.backoff * (2 ** attempt))

    def _retry_after(self, resp: httpx.Response) -> float | None:
        """Retry-After in seconds (delta or HTTP date), capped at max_retry_wait."""
        value = resp.headers.get("retry-after")
        if not value:
            return None
        try:
            secs = float(value)
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(value)
            except (TypeError, ValueError):
                return None
            secs = when.timestamp() - time.time()
        return max(0.0, min(secs, self.config.max_retry_wait))

    async def _sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def fetch_page(self, client: httpx.AsyncClient, url: str, params: dict[str, Any]) -> Any:
        """GET/POST one page (with auth) and return its JSON body."""
        cfg = self.config
        kw: dict[str, Any] = {"params": params or None, "headers": dict(cfg.headers)}
        if cfg.method == "POST" and cfg.body is not None:
            if isinstance(cfg.body, (dict, list)):
                kw["json"] = cfg.body
            else:
                kw["content"] = str(cfg.body).encode()
        for attempt in (0, 1):
            await self._authorize(client, kw, force=attempt == 1)
            resp = await self.send(client, cfg.method, url, **kw)
            if resp.status_code == 401 and self.oauth is not None and attempt == 0:
                continue  # the token may have been revoked or expired early: renew once
            break
        if resp.status_code >= 400:
            raise RecordError(f"http source: {cfg.method} {resp.request.url} answered "
                              f"{resp.status_code} {resp.reason_phrase}: {resp.text[:200]}")
        try:
            return resp.json()
        except ValueError as exc:
            raise RecordError(f"http source: {resp.request.url} did not answer JSON "
                              f"({resp.headers.get('content-type', '?')})") from exc

    async def _authorize(self, client: httpx.AsyncClient, kw: dict[str, Any], force: bool) -> None:
        a = self.config.auth
        if a is None:
            return
        if a.type == "basic":
            kw["auth"] = httpx.BasicAuth(a.username or "", a.password or "")
        elif a.type == "bearer":
            kw["headers"]["Authorization"] = f"Bearer {a.token}"
        else:
            assert self.oauth is not None
            kw["headers"]["Authorization"] = f"Bearer {await self.oauth.get(client, force=force)}"

    # -- walking -----------------------------------------------------------------------------------
    def records_of(self, body: Any, url: str) -> list[Any]:
        pg = self.config.pagination
        field = pg.data_field if pg is not None and pg.data_field else self.config.data_field
        data = dotted(body, field)
        if data is None:
            if field:
                raise RecordError(f"http source: {url}: the response has no field {field!r}")
            return []
        if isinstance(data, list):
            return data
        return [data]

    async def batches(self) -> AsyncGenerator[Batch, None]:
        cfg = self.config
        pg = cfg.pagination
        async with httpx.AsyncClient(timeout=cfg.timeout, verify=cfg.verify_tls,
                                     follow_redirects=True) as client:
            url = cfg.url
            params = dict(cfg.query)
            offset = pg.start_offset if pg else 0
            seen: set[str] = set()
            while True:
                if pg is not None and pg.type == "offset":
                    params[pg.offset_param] = offset
                    params[pg.limit_param] = pg.limit
                body = await self.fetch_page(client, url, params)
                self.pages += 1
                recs = self.records_of(body, url)
                if recs:
                    yield Batch(recs, None, index=range(self.records, self.records + len(recs)),
                                meta={"url": url, "page": self.pages}, born=time.monotonic())
                    self.records += len(recs)
                if pg is None:
                    return
                more, url, params = self._next(pg, body, url, params, len(recs), seen)
                if not more:
                    return
                if self.pages >= pg.max_pages:
                    self.truncated = True
                    msg = (f"http source: stopped after max_pages={pg.max_pages} pages; the API "
                           "offers more (raise max_pages to read them)")
                    if cfg.on_max_pages == "error":
                        raise RecordError(msg)
                    self.ctx.warn(msg)
                    return
                offset += pg.limit

    def _next(self, pg: PaginationConfig, body: Any, url: str, params: dict[str, Any], count: int,
              seen: set[str]) -> tuple[bool, str, dict[str, Any]]:
        """Whether another page exists, and its URL and params."""
        if pg.type == "offset":
            return count >= pg.limit and count > 0, url, params
        if pg.type == "next_url":
            nxt = dotted(body, pg.next_field)
            if not nxt:
                return False, url, params
            full = urllib.parse.urljoin(url if not params else str(httpx.URL(url, params=params)), str(nxt))
            if full in seen:
                self.ctx.warn(f"http source: the next page URL repeats ({full}); stopping")
                return False, url, params
            seen.add(full)
            return True, full, {}
        cursor = dotted(body, pg.cursor_field)
        if cursor in (None, "", False):
            return False, url, params
        if str(cursor) in seen:
            self.ctx.warn(f"http source: the cursor repeats ({cursor}); stopping")
            return False, url, params
        seen.add(str(cursor))
        return True, url, {**params, pg.cursor_param: cursor}

    def stats(self) -> dict[str, Any]:
        out = {"type": "http", "pages": self.pages, "requests": self.requests, "retries": self.retried,
               "records": self.records, "truncated": self.truncated}
        if self.oauth is not None:
            out["token_fetches"] = self.oauth.fetches
        return out
