"""The Python client (python/makenaide_core) against the real extension.

tests/tests/python_layer.rs runs this file with pytest while an environment of the harness is up: the extension with a
test database (schema applied) and the simulated Upbit (clock fixed), MAKENAIDE_CORE_PORT/MAKENAIDE_CORE_TOKEN
pointing at it, PYTHONPATH = the layer's python/ as Lambda unpacks it, MAKENAIDE_TEST_UPBIT_URL = the simulator
itself (the oracle: what Upbit answers directly). The Rust test then checks the database for what this file wrote.
"""

from __future__ import annotations

import json
import os
import select
import socket
import threading
import urllib.error
import urllib.request
from typing import Any

import pytest

import makenaide_core as mc

UPBIT = os.environ.get("MAKENAIDE_TEST_UPBIT_URL", "")
needs_env = pytest.mark.skipif(not UPBIT, reason="run by tests/tests/python_layer.rs (needs the harness)")


def direct(path: str) -> Any:
    """What the simulated Upbit itself answers."""
    with urllib.request.urlopen(UPBIT + path, timeout=10) as r:
        return json.load(r)


class Context:
    """The part of awslambdaric's LambdaContext the client reads."""

    def __init__(self, remaining_ms: int) -> None:
        self.remaining_ms = remaining_ms

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


@needs_env
def test_candles_page_back_like_the_rust_collector() -> None:
    got = mc.upbit.candles("KRW-BTC", "days", 450)
    assert len(got) == 450
    # Page 1 is Upbit's newest 200; each next page is Upbit's answer for `to` = the oldest candle so far, in UTC.
    assert got[:200] == direct("/v1/candles/days?market=KRW-BTC&count=200")
    to = got[199]["candle_date_time_utc"] + "Z"
    assert got[200:400] == direct(f"/v1/candles/days?market=KRW-BTC&count=200&to={to}")
    to = got[399]["candle_date_time_utc"] + "Z"
    assert got[400:] == direct(f"/v1/candles/days?market=KRW-BTC&count=50&to={to}")
    utc = [c["candle_date_time_utc"] for c in got]
    assert utc == sorted(set(utc), reverse=True)  # newest first, no duplicates
    # An explicit `to` without a zone is UTC; a count under one page is one request.
    assert mc.upbit.candles("KRW-ETH", "minutes/5", 3, to="2025-03-14T00:00:00") == direct(
        "/v1/candles/minutes/5?market=KRW-ETH&count=3&to=2025-03-14T00:00:00Z")


@needs_env
def test_quotation_calls_answer_what_upbit_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    markets = mc.upbit.markets()
    assert markets == direct("/v1/market/all?is_details=true")
    assert "market_event" in markets[0]
    assert mc.upbit.markets(is_details=False) == direct("/v1/market/all?is_details=false")
    krw = [m["market"] for m in markets if m["market"].startswith("KRW-")]
    tickers = mc.upbit.tickers(krw)
    assert [t["market"] for t in tickers] == krw
    assert tickers == direct("/v1/ticker?markets=" + ",".join(krw))
    # Split into calls of MAX_MARKETS_PER_TICKER_CALL (100; fewer here, so the simulator's markets need several).
    monkeypatch.setattr(mc, "MAX_MARKETS_PER_TICKER_CALL", 10)
    assert len(krw) > 30 and mc.upbit.tickers(krw) == tickers
    assert mc.upbit.orderbook(["KRW-BTC", "KRW-ETH"]) == direct("/v1/orderbook?markets=KRW-BTC,KRW-ETH")
    assert mc.upbit.trades("KRW-BTC", 5) == direct("/v1/trades/ticks?market=KRW-BTC&count=5")
    assert mc.upbit.get("/v1/ticker", markets=["KRW-BTC"]) == direct("/v1/ticker?markets=KRW-BTC")
    assert mc.upbit.get("/v1/candles/days?market=KRW-BTC", count=2) == direct("/v1/candles/days?market=KRW-BTC&count=2")


@needs_env
def test_upbit_error_is_upstream_error_with_upbit_status() -> None:
    with pytest.raises(mc.UpstreamError) as e:
        mc.upbit.candles("KRW-NOPE0", "days", 3)
    assert (e.value.status, e.value.source, e.value.code) == (404, "upbit", None)
    assert e.value.message == direct_error("/v1/candles/days?market=KRW-NOPE0&count=3")


def direct_error(path: str) -> str:
    try:
        direct(path)
    except urllib.error.HTTPError as err:
        return str(json.load(err)["error"]["message"])
    raise AssertionError(f"{path} did not fail")


@needs_env
def test_query_and_transaction_rows_and_dicts() -> None:
    r = mc.db.transaction([
        "create table py_client (k text primary key, v int8, tags text[])",
        ("insert into py_client values ($1, $2, $3)", ["a", 1, ["x", "y"]]),
        {"sql": "insert into py_client values ($1, $2, $3)", "params": ["b", 2, []]},
        "select k, v from py_client order by k",
    ])
    assert [x.row_count for x in r] == [0, 1, 1, 2]
    assert r[3] == [["a", 1], ["b", 2]]
    rows = mc.db.query("select k, v, tags from py_client where v >= $1 order by k", [1])
    assert rows == [["a", 1, ["x", "y"]], ["b", 2, []]]
    assert [c["name"] for c in rows.columns] == ["k", "v", "tags"]
    assert [c["type"] for c in rows.columns[:2]] == ["text", "int8"]
    assert rows.row_count == 2
    dicts = mc.db.query("select k, v from py_client order by k", dicts=True, timeout_ms=5000)
    assert dicts == [{"k": "a", "v": 1}, {"k": "b", "v": 2}]
    assert mc.db.transaction([("select $1::int8 as n", [7])], dicts=True)[0] == [{"n": 7}]


@needs_env
def test_sql_errors_carry_code_status_sqlstate_and_statement() -> None:
    with pytest.raises(mc.DatabaseError) as e:
        mc.db.query("select * from no_such_table")
    assert (e.value.code, e.value.status, e.value.sqlstate, e.value.source) == ("sql_error", 400, "42P01", "core")
    assert "no_such_table" in e.value.message
    # All or nothing: the failing second statement names its index and the first one's row is not stored.
    with pytest.raises(mc.DatabaseError) as e:
        mc.db.transaction([("insert into py_client values ($1, $2)", ["c", 3]),
                           ("insert into py_client values ($1, $2)", ["a", 9])])
    assert (e.value.code, e.value.sqlstate, e.value.statement_index) == ("sql_error", "23505", 1)
    assert mc.db.query("select count(*) from py_client where k = 'c'") == [[0]]
    with pytest.raises(mc.DatabaseError) as e:
        mc.db.query("select $1::int8", ["not a number"])
    assert (e.value.code, e.value.status) == ("invalid_param", 400)
    assert "DatabaseError" == type(e.value).__name__  # what Lambda shows as errorType, as the Rust functions


@needs_env
def test_token_errors() -> None:
    wrong = mc.Core(token="not-the-token")
    with pytest.raises(mc.CoreUnavailable) as e:
        mc.Db(wrong).query("select 1")
    assert (e.value.code, e.value.status) == ("invalid_token", 403)
    with pytest.raises(mc.CoreUnavailable) as e:
        mc.Upbit(wrong).markets()
    assert (e.value.code, e.value.status, e.value.source) == ("invalid_token", 403, "core")
    assert "not-the-token" not in repr(wrong) and "not-the-token" not in str(e.value)


@needs_env
def test_deadline_from_the_context_bounds_the_statement() -> None:
    c = mc.Core()
    sent = c.use_context(Context(3000))
    assert sent is not None
    # 3 s left, 750 ms kept back: the extension stops the 30 s statement at the deadline it was sent (without it,
    # the client would give up first, 250 ms after that deadline, with CoreUnavailable).
    with pytest.raises(mc.DatabaseError) as e:
        mc.Db(c).query("select pg_sleep(30)")
    assert (e.value.code, e.value.status) == ("db_timeout", 504)
    # An emulator's implausible value (0, a duration taken for a time) sends no deadline at all.
    assert c.use_context(Context(0)) is None and c.deadline_ms is None
    assert mc.Db(c).query("select 1 as one") == [[1]]


@needs_env
def test_one_kept_alive_connection_and_reconnect_after_the_server_closed_it() -> None:
    c = mc.Core()
    mc.Db(c).query("select 1")
    first = c._conn
    mc.Db(c).query("select 2")
    assert c._conn is first  # kept alive
    # The extension closes idle connections when it wants to (here: we make its side of the socket go away by
    # shutting ours for writing: it answers EOF and closes). The next request must reconnect before sending.
    assert first is not None and first.sock is not None
    first.sock.shutdown(socket.SHUT_WR)
    assert select.select([first.sock], [], [], 10)[0], "the extension did not close its side"
    assert mc.Db(c).query("select 3") == [[3]]
    assert c._conn is not first


def test_a_write_sent_whole_is_never_sent_twice() -> None:
    """A server that reads the whole request and then drops the connection without answering: the POST must fail
    (the extension may have applied it), never be resent; a GET (a read) is resent once."""
    seen: list[bytes] = []
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()

    def serve() -> None:
        for _ in range(3):
            conn, _ = server.accept()
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            length = [int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")]
            while length and len(body) < length[0]:
                body += conn.recv(65536)
            seen.append(head.split(b" ")[0])
            if len(seen) == 3:  # the resent GET gets an answer
                conn.sendall(b'HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-makenaide-source: upbit\r\n\r\n[]')
            conn.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    c = mc.Core(port=server.getsockname()[1], token="t")
    with pytest.raises(mc.CoreUnavailable):
        mc.Db(c).query("insert into x values (1)")
    assert seen == [b"POST"]
    assert mc.Upbit(c).get("/v1/ticker", markets="KRW-BTC") == []
    assert seen == [b"POST", b"GET", b"GET"]
    t.join(5)
    server.close()


def test_missing_token_and_bad_port_say_what_to_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MAKENAIDE_CORE_TOKEN", raising=False)
    monkeypatch.setenv("AWS_SESSION_TOKEN", "")
    with pytest.raises(mc.CoreUnavailable) as e:
        mc.Core()
    assert "set MAKENAIDE_CORE_TOKEN" in e.value.message and "set but empty" in e.value.message
    monkeypatch.setenv("AWS_SESSION_TOKEN", "session")
    assert mc.Core().token == "session"
    monkeypatch.setenv("MAKENAIDE_CORE_TOKEN", "core")
    assert mc.Core().token == "core"
    monkeypatch.setenv("MAKENAIDE_CORE_PORT", "99999")
    with pytest.raises(mc.CoreUnavailable) as e:
        mc.Core()
    assert "MAKENAIDE_CORE_PORT" in e.value.message
