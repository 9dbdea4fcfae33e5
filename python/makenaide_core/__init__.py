"""The makenaide-core extension from Python (stdlib only). ``use_context(context)`` first in a handler, then
``upbit.*``, ``db.*``. Shared names are checked against the contract crate (tests/tests/python_layer.rs)."""

from __future__ import annotations

import http.client
import json
import os
import re
import select
import socket
import time
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union
from urllib.parse import urlencode

# The contract (contract/src/).
TOKEN_HEADER = "x-makenaide-token"
DEADLINE_HEADER = "x-makenaide-deadline-ms"
SOURCE_HEADER = "x-makenaide-source"
SOURCE_CORE = "core"
ENV_CORE_PORT = "MAKENAIDE_CORE_PORT"
DEFAULT_CORE_PORT = 4571
ENV_CORE_TOKEN = "MAKENAIDE_CORE_TOKEN"
ENV_AWS_SESSION_TOKEN = "AWS_SESSION_TOKEN"
ENV_FUNCTION_TIMEOUT = "AWS_LAMBDA_FUNCTION_TIMEOUT"
DB_QUERY = "/db/query"
DB_TRANSACTION = "/db/transaction"
MAX_TIMEOUT_MS = 15 * 60 * 1000
FUTURE_SLACK_MS = 60 * 1000
D, C, U = "DatabaseError", "CoreUnavailable", "UpstreamError"
# Every error code: its HTTP status, and the errorType the Rust functions give it.
ERROR_CODES: Dict[str, Tuple[int, str]] = {
    "invalid_json": (400, D), "invalid_request": (400, D), "invalid_param": (400, D), "sql_error": (400, D),
    "statement_not_supported": (400, D), "row_limit_exceeded": (400, D), "response_too_large": (400, D),
    "forwarded_request": (400, C), "missing_token": (401, C), "invalid_token": (403, C), "read_only": (403, D),
    "not_found": (404, C), "method_not_allowed": (405, C), "body_too_large": (413, D), "uri_too_long": (414, C),
    "too_many_connections": (429, C), "headers_too_large": (431, C), "db_not_configured": (503, D),
    "db_unavailable": (503, D), "db_outcome_unknown": (503, D), "db_busy": (503, D),
    "db_credentials_unavailable": (503, D), "db_timeout": (504, D), "upstream_error": (502, U),
    "upstream_deadline": (504, U), "shutting_down": (503, C), "config_invalid": (500, C), "internal": (500, C),
}
# The Rust functions' time budget (functions/pipeline/src/deadline.rs) and Upbit's page sizes.
DEADLINE_MARGIN_MS = 750
DEADLINE_GRACE_S = 0.25
DEFAULT_TIMEOUT_S = 60.0
CONNECT_RETRY_S = 2.0
MAX_CANDLES_PER_REQUEST = 200
MAX_MARKETS_PER_TICKER_CALL = 100
_TIME = re.compile(r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d\Z")


class Error(Exception):
    """``code`` (the contract's, None for Upbit's errors), ``status``, ``sqlstate``, ``statement_index``,
    ``message``, ``source`` (core, upbit), ``body``."""

    def __init__(self, message: str, status: int = 0, code: Optional[str] = None, sqlstate: Optional[str] = None,
                 statement_index: Optional[int] = None, source: str = SOURCE_CORE,
                 body: Optional[Dict[str, Any]] = None) -> None:
        self.message, self.status, self.code, self.sqlstate = message, status, code, sqlstate
        self.statement_index, self.source, self.body = statement_index, source, body or {}
        extra = "".join(f", {k} {v}" for k, v in (("sqlstate", sqlstate), ("statement", statement_index)) if v is not None)
        super().__init__(f"{code or source} (HTTP {status}{extra}): {message}")


class CoreUnavailable(Error):
    pass


class DatabaseError(Error):
    pass


class UpstreamError(Error):
    pass


class InvalidEvent(Error):
    pass


def core_error(status: int, err: Mapping[str, Any]) -> Error:
    cls: type[Error] = globals()[ERROR_CODES.get(str(err.get("code")), (0, D))[1]]
    i = err.get("statement_index")
    return cls(str(err.get("message")), status, str(err.get("code")), err.get("sqlstate"),
               i if isinstance(i, int) else None, SOURCE_CORE, dict(err))


def resolve_token(core_token: Optional[str], session_token: Optional[str]) -> str:
    if core_token or session_token:
        return core_token or session_token or ""
    state = ("is set but empty (the Runtime Interface Emulator passes it empty when it was given no AWS credentials)"
             if session_token is not None else "is not set either (e.g. under SnapStart)")
    raise CoreUnavailable(f"no token: set {ENV_CORE_TOKEN} to a shared secret in the function's environment (the "
                          f"functions send it as X-Makenaide-Token); {ENV_AWS_SESSION_TOKEN}, the fallback, {state}")


def deadline_ms(remaining_ms: Optional[float], now_ms: Optional[int] = None) -> Optional[int]:
    """Epoch ms to send, margin off. An implausible ``remaining_ms`` (emulators) falls back to
    AWS_LAMBDA_FUNCTION_TIMEOUT, else None."""
    now = int(time.time() * 1000) if now_ms is None else now_ms
    if remaining_ms is not None and 0 < remaining_ms <= MAX_TIMEOUT_MS + FUTURE_SLACK_MS:
        left = int(remaining_ms)
    else:
        t = os.environ.get(ENV_FUNCTION_TIMEOUT, "").strip()
        if not (t.isdigit() and 1 <= int(t) <= MAX_TIMEOUT_MS // 1000):
            return None
        left = int(t) * 1000
    return now + left - min(DEADLINE_MARGIN_MS, left // 2)


class Result(List[Any]):
    """Rows (lists, or dicts with ``dicts=True``) with ``columns`` ([{name, type}]) and ``row_count``."""

    def __init__(self, reply: Mapping[str, Any], dicts: bool = False) -> None:
        self.columns: List[Dict[str, str]] = reply.get("columns") or []
        self.row_count: int = reply.get("row_count") or 0
        names = [c["name"] for c in self.columns]
        rows = reply.get("rows") or []
        super().__init__([dict(zip(names, r)) for r in rows] if dicts else rows)


class Core:
    """One keep-alive connection, the token and the deadline. Not thread-safe: one per thread."""

    def __init__(self, port: Optional[int] = None, token: Optional[str] = None) -> None:
        raw = os.environ.get(ENV_CORE_PORT, "").strip()
        if port is None and raw and not (raw.isdigit() and 0 < int(raw) < 65536):
            raise CoreUnavailable(f"{ENV_CORE_PORT}={raw!r} is not a valid port (1-65535)")
        self.port = port or int(raw or DEFAULT_CORE_PORT)
        self.token = token or resolve_token(os.environ.get(ENV_CORE_TOKEN), os.environ.get(ENV_AWS_SESSION_TOKEN))
        self.deadline_ms: Optional[int] = None
        self._conn: Optional[http.client.HTTPConnection] = None

    def __repr__(self) -> str:  # never the token
        return f"Core(port={self.port}, deadline_ms={self.deadline_ms})"

    def use_context(self, context: Any) -> Optional[int]:
        self.deadline_ms = deadline_ms(context.get_remaining_time_in_millis() if context else None)
        return self.deadline_ms

    def _timeout(self) -> float:
        d = self.deadline_ms
        return DEFAULT_TIMEOUT_S if d is None else max(d / 1000 - time.time(), 0) + DEADLINE_GRACE_S

    def close(self) -> None:
        if self._conn:
            self._conn.close()
        self._conn = None

    def _fail(self, what: str, e: BaseException) -> CoreUnavailable:
        self.close()
        return CoreUnavailable(f"{what}: {e!r} (makenaide-core on port {self.port}?)")

    def _connection(self) -> http.client.HTTPConnection:
        # A readable idle socket was closed by the extension: reconnect, before sending (safe for any request).
        if self._conn and self._conn.sock and select.select([self._conn.sock], [], [], 0)[0]:
            self.close()
        if not self._conn:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self._timeout())
            start, delay = time.monotonic(), 0.025
            while True:
                try:
                    conn.connect()
                    break
                except ConnectionRefusedError as e:  # not listening yet (an emulator's first invoke)
                    if time.monotonic() - start + delay > CONNECT_RETRY_S:
                        raise self._fail("connect", e) from e
                    time.sleep(delay)
                    delay *= 2
                except OSError as e:
                    raise self._fail("connect", e) from e
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._conn = conn
        self._conn.sock.settimeout(self._timeout())
        return self._conn

    def request(self, method: str, path: str, body: Optional[bytes] = None) -> Tuple[int, Optional[str], bytes]:
        """(status, source header, body). A request failing while sent is resent once (the extension acts only on
        a whole request); failing after, only a GET."""
        headers = {TOKEN_HEADER: self.token, "content-type": "application/json"}
        if self.deadline_ms is not None:
            headers[DEADLINE_HEADER] = str(self.deadline_ms)
        for again in (True, False):
            conn = self._connection()
            try:
                conn.request(method, path, body, headers)
            except OSError as e:
                if again:
                    self.close()
                    continue
                raise self._fail(f"{method} {path}", e) from e
            try:
                resp = conn.getresponse()
                data = resp.read()
            except (OSError, http.client.HTTPException) as e:
                if again and method == "GET" and not isinstance(e, socket.timeout):
                    self.close()
                    continue
                raise self._fail(f"{method} {path}", e) from e
            if resp.will_close:
                self.close()
            return resp.status, resp.getheader(SOURCE_HEADER), data
        raise AssertionError

    def post(self, path: str, payload: Mapping[str, Any]) -> Any:
        status, _, data = self.request("POST", path, json.dumps(payload).encode())
        reply = _decode(data, status, SOURCE_CORE)
        if status < 300:
            return reply
        err = reply.get("error") if isinstance(reply, dict) else None
        if isinstance(err, dict) and isinstance(err.get("code"), str):
            raise core_error(status, err)
        raise CoreUnavailable(f"not an error body: {data[:200]!r}", status)


def _decode(data: bytes, status: int, source: str) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        cls = UpstreamError if source == "upbit" else CoreUnavailable
        raise cls(f"not JSON: {data[:200]!r}", status, source=source) from None


_default: Optional[Core] = None


def core() -> Core:
    global _default
    _default = _default or Core()
    return _default


def use_context(context: Any) -> Optional[int]:
    return core().use_context(context)


def _param(v: Any) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    return ",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)


class Upbit:
    """Upbit's quotation API through the extension's mirror."""

    def __init__(self, core_: Optional[Core] = None) -> None:
        self._core = core_

    def get(self, path: str, **params: Any) -> Any:
        query = urlencode({k: _param(v) for k, v in params.items() if v is not None}, safe=",:")
        if query:
            path += ("&" if "?" in path else "?") + query
        status, source, data = (self._core or core()).request("GET", path)
        reply = _decode(data, status, source or "upbit")
        err = reply.get("error") if isinstance(reply, dict) else None
        if status < 300:
            return reply
        if isinstance(err, dict) and (source or SOURCE_CORE) == SOURCE_CORE and isinstance(err.get("code"), str):
            raise core_error(status, err)
        raise UpstreamError(str(err.get("message") if isinstance(err, dict) else data[:200]), status,
                            source="upbit", body=err if isinstance(err, dict) else {})

    def candles(self, market: str, interval: str, count: int, to: Optional[str] = None) -> List[Dict[str, Any]]:
        """Newest first, no duplicates, paged as the Rust collector: 200 a page, next ``to`` = oldest kept + Z."""
        out: List[Dict[str, Any]] = []
        seen, prev = set(), None
        if to and not (to.endswith("Z") or "+" in to[19:] or "-" in to[19:]):
            to += "Z"
        while count > 0:
            page = self.get(f"/v1/candles/{interval}", market=market, count=min(count, MAX_CANDLES_PER_REQUEST), to=to)
            for c in page:
                if c.get("market") != market or not (_TIME.match(str(c.get("candle_date_time_utc")))
                                                     and _TIME.match(str(c.get("candle_date_time_kst")))):
                    raise UpstreamError(f"candle for {market}: {str(c)[:200]}", source="upbit")
            kept = page[:count]
            if not kept:
                break
            count -= len(kept)
            for c in kept:
                if c["candle_date_time_utc"] not in seen:
                    seen.add(c["candle_date_time_utc"])
                    out.append(c)
            oldest = min(c["candle_date_time_utc"] for c in kept)
            if prev and oldest >= prev:
                break  # a server ignoring `to`
            prev, to = oldest, oldest + "Z"
        return out

    def markets(self, is_details: bool = True) -> Any:
        return self.get("/v1/market/all", is_details=is_details)

    def tickers(self, markets: Iterable[str]) -> List[Any]:
        ms, n = list(markets), MAX_MARKETS_PER_TICKER_CALL
        return [t for i in range(0, len(ms), n) for t in self.get("/v1/ticker", markets=ms[i:i + n])]

    def orderbook(self, markets: Iterable[str]) -> Any:
        return self.get("/v1/orderbook", markets=list(markets))

    def trades(self, market: str, count: int = 1) -> Any:
        return self.get("/v1/trades/ticks", market=market, count=count)


Statement = Union[str, Tuple[str, Sequence[Any]], Mapping[str, Any]]


class Db:
    """``options`` (e.g. ``timeout_ms``) go into the request."""

    def __init__(self, core_: Optional[Core] = None) -> None:
        self._core = core_

    def query(self, sql: str, params: Sequence[Any] = (), *, dicts: bool = False, **options: Any) -> Result:
        return Result((self._core or core()).post(DB_QUERY, {"sql": sql, "params": list(params), **options}), dicts)

    def transaction(self, statements: Sequence[Statement], *, dicts: bool = False, **options: Any) -> List[Result]:
        """Statements: ``sql``, ``(sql, params)`` or ``{"sql", "params"}``."""
        st = [{"sql": s, "params": []} if isinstance(s, str) else {"sql": s[0], "params": list(s[1])}
              if isinstance(s, tuple) else dict(s) for s in statements]
        results = (self._core or core()).post(DB_TRANSACTION, {"statements": st, **options}).get("results")
        if len(results or ()) != len(st):
            raise CoreUnavailable(f"{len(results or ())} results for {len(st)} statements")
        return [Result(r, dicts) for r in results]


upbit = Upbit()
db = Db()
