"""The data collector written the old way: the Python baseline of makenaide-bench.

What the first Makenaide version did, reduced to the collector's path:
- pyupbit-style data access: module-level ``requests.get`` (no Session, so a new TCP connection per call), status
  >= 400 raises, and ``get_ohlcv`` swallows the exception and returns None (pyupbit builds a pandas DataFrame;
  that import is left out here, which only makes the baseline faster);
- markets fetched one after another with a fixed ``time.sleep(0.05)`` between them as the only rate limiting;
- a new psycopg2 connection per invocation (TLS, SCRAM), rows upserted one ``execute`` at a time, commit, close.

Event and result follow makenaide-data-collector: ``{"markets": [...], "interval": "days", "count": 3}`` ->
``{"success": true, "result": {"stored": {...}, "rows_stored": n, "failed": {...}}, "execution_time", "timestamp"}``.
"""

import datetime
import os
import time

import psycopg2
import requests

# Configuration (environment variables, as the Rust functions read them).
UPBIT_BASE_URL = os.environ.get("MAKENAIDE_UPBIT_BASE_URL", "https://api.upbit.com").rstrip("/")
DATABASE_URL = os.environ.get("MAKENAIDE_DATABASE_URL", "")
# The old code's only rate limiting: a fixed pause between two markets.
SLEEP_BETWEEN_MARKETS = float(os.environ.get("BENCH_SLEEP_BETWEEN_MARKETS", "0.05"))

UPSERT_SQL = """
INSERT INTO ohlcv (market, "interval", candle_date_time_utc, candle_date_time_kst, opening_price, high_price,
    low_price, trade_price, candle_acc_trade_volume, candle_acc_trade_price, "timestamp", updated_at)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, now())
ON CONFLICT (market, "interval", candle_date_time_utc) DO UPDATE SET
    candle_date_time_kst = EXCLUDED.candle_date_time_kst, opening_price = EXCLUDED.opening_price,
    high_price = EXCLUDED.high_price, low_price = EXCLUDED.low_price, trade_price = EXCLUDED.trade_price,
    candle_acc_trade_volume = EXCLUDED.candle_acc_trade_volume,
    candle_acc_trade_price = EXCLUDED.candle_acc_trade_price, "timestamp" = EXCLUDED."timestamp",
    updated_at = EXCLUDED.updated_at
"""


class UpbitError(Exception):
    def __init__(self, status, body):
        super().__init__(f"{status}: {body[:200]}")
        self.status = status
        self.body = body


def _call_public_api(url, **params):
    """pyupbit.request_api._call_public_api: a bare requests.get, errors raised."""
    resp = requests.get(url, params=params)
    if 200 <= resp.status_code < 400:
        return resp.json(), resp.headers.get("Remaining-Req")
    raise UpbitError(resp.status_code, resp.text)


LAST_ERROR = {}


def get_ohlcv(ticker, interval="days", count=200, to=None):
    """pyupbit.get_ohlcv without the DataFrame: None on any failure."""
    try:
        params = {"market": ticker, "count": count}
        if to is not None:
            params["to"] = to
        data, _remaining = _call_public_api(f"{UPBIT_BASE_URL}/v1/candles/{interval}", **params)
        return data
    except Exception as e:  # pyupbit: `except Exception as x: print(x.__class__.__name__); return None`
        LAST_ERROR[ticker] = e
        return None


def lambda_handler(event, context):
    started = time.time()
    event = event or {}
    markets = event.get("markets") or []
    interval = event.get("interval", "days")
    count = int(event.get("count", 3))

    candles = []
    failed = {}
    for i, market in enumerate(markets):
        if i > 0:
            time.sleep(SLEEP_BETWEEN_MARKETS)
        data = get_ohlcv(market, interval=interval, count=count)
        if data is None:
            err = LAST_ERROR.pop(market, None)
            failed[market] = {"status": getattr(err, "status", 0), "message": str(err)}
            continue
        candles.extend(data)

    stored = {}
    conn = psycopg2.connect(DATABASE_URL)
    try:
        with conn.cursor() as cur:
            for c in candles:
                cur.execute(
                    UPSERT_SQL,
                    (
                        c["market"],
                        interval,
                        c["candle_date_time_utc"],
                        c["candle_date_time_kst"],
                        c["opening_price"],
                        c["high_price"],
                        c["low_price"],
                        c["trade_price"],
                        c["candle_acc_trade_volume"],
                        c["candle_acc_trade_price"],
                        c["timestamp"],
                    ),
                )
                stored[c["market"]] = stored.get(c["market"], 0) + cur.rowcount
        conn.commit()
    finally:
        conn.close()

    return {
        "success": True,
        "result": {
            "interval": interval,
            "count": count,
            "stored": stored,
            "rows_stored": sum(stored.values()),
            "failed": failed,
        },
        "execution_time": time.time() - started,
        "timestamp": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
