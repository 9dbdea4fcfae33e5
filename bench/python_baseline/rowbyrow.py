"""Row-by-row storage the old way (figure 5 of makenaide-bench): psycopg2, one ``execute`` per candle, one commit
per market. Reads the rows the benchmark generated (a JSON file, not timed) and prints one JSON line:
``{"rows": n, "seconds": s}``.

usage: rowbyrow.py DATABASE_URL ROWS_JSON
"""

import json
import sys
import time

import psycopg2

from handler import UPSERT_SQL


def main(url, path):
    with open(path) as f:
        rows = json.load(f)
    started = time.perf_counter()
    conn = psycopg2.connect(url)
    n = 0
    with conn.cursor() as cur:
        market = None
        for c in rows:
            if market is not None and c["market"] != market:
                conn.commit()
            market = c["market"]
            cur.execute(
                UPSERT_SQL,
                (
                    c["market"],
                    "days",
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
            n += cur.rowcount
    conn.commit()
    conn.close()
    print(json.dumps({"rows": n, "seconds": time.perf_counter() - started}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
