"""makenaide-data-collector on the makenaide-core layer: the Rust collector's event, upsert and result envelope."""
import time
from datetime import datetime, timezone
import makenaide_core as mc  # the layer's /opt/python/makenaide_core

INTERVALS = {"days", "weeks", "months", *(f"minutes/{u}" for u in (1, 3, 5, 10, 15, 30, 60, 240))}
KEYS = ("market", "candle_date_time_utc", "candle_date_time_kst", "opening_price", "high_price", "low_price",
        "trade_price", "candle_acc_trade_volume", "candle_acc_trade_price", "timestamp")
UPSERT = """WITH up AS (INSERT INTO ohlcv (market, "interval", candle_date_time_utc, candle_date_time_kst, opening_price,
  high_price, low_price, trade_price, candle_acc_trade_volume, candle_acc_trade_price, "timestamp", updated_at)
 SELECT m, $1::text, u::timestamp, k::timestamp, o, h, l, c, v, p, ts, now() FROM unnest($2::text[], $3::text[],
  $4::text[], $5::float8[], $6::float8[], $7::float8[], $8::float8[], $9::float8[], $10::float8[], $11::int8[])
  AS t(m, u, k, o, h, l, c, v, p, ts)
 ON CONFLICT (market, "interval", candle_date_time_utc) DO UPDATE SET """ + ", ".join(f"{k} = EXCLUDED.{k}" for k in (
    "candle_date_time_kst", "opening_price", "high_price", "low_price", "trade_price", "candle_acc_trade_volume",
    "candle_acc_trade_price", '"timestamp"', "updated_at")) + """ RETURNING market)
SELECT market, count(*)::int8 AS stored FROM up GROUP BY market ORDER BY market"""


def lambda_handler(event, context):
    started = time.monotonic()
    mc.use_context(context)
    markets, interval, count = event.get("markets"), event.get("interval", "days"), event.get("count", 3)
    if not isinstance(markets, list) or interval not in INTERVALS or type(count) is not int or not 0 < count <= 10000:
        raise mc.InvalidEvent(f"want markets (a list), interval in {sorted(INTERVALS)}, count 1-10000: got {event}")
    stored, failed, rows = {}, {}, []
    for market in dict.fromkeys(markets):  # duplicates dropped, order kept
        try:
            rows += mc.upbit.candles(market, interval, count)
            stored[market] = 0
        except mc.UpstreamError as e:  # one bad market is reported, the others are stored
            failed[market] = {"status": e.status, "message": f"{e.code}: {e.message}" if e.code else e.message}
    for i in range(0, len(rows), 1000):
        columns = [[c[k] for c in rows[i:i + 1000]] for k in KEYS]
        for market, n in mc.db.query(UPSERT, [interval, *columns]):
            stored[market] += int(n)
    result = {"interval": interval, "count": count, "stored": dict(sorted(stored.items())),
              "rows_stored": sum(stored.values()), "failed": dict(sorted(failed.items()))}
    return {"success": True, "result": result, "execution_time": time.monotonic() - started,
            "timestamp": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
