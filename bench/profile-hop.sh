#!/usr/bin/env bash
# Profile of figure 2 (the localhost hop): where the extension spends a `/db/query select 1`.
# Builds a symbolized release extension (same profile, not stripped) into bench-out/prof-target, runs
# `makenaide-bench --only 2` with it, and while it runs records the extension with perf (cpu-clock: this VM has no
# hardware counters) and counts its syscalls with strace, then traces the client's syscalls (the bench process:
# the functions' CoreClient). Output: bench-out/profile/{perf-*.txt,strace-*.txt}.
# Run ./bench.sh once first (release binaries, venv).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=$ROOT/bench-out/profile
mkdir -p "$OUT" "$ROOT/bench-out/prof-bin"
CARGO_TARGET_DIR=$ROOT/bench-out/prof-target CARGO_PROFILE_RELEASE_STRIP=none \
  CARGO_PROFILE_RELEASE_DEBUG=line-tables-only cargo build --release -p makenaide-core
BIN=$ROOT/bench-out/prof-bin
ln -sf "$ROOT/bench-out/prof-target/release/makenaide-core" "$BIN/makenaide-core"
for f in makenaide-data-collector makenaide-db-initializer bench-direct-collector; do
  ln -sf "$ROOT/target/release/$f" "$BIN/$f"
done
MAKENAIDE_BIN_DIR=$BIN "$ROOT/target/release/makenaide-bench" --python "$ROOT/bench-out/venv/bin/python" \
  --out "$OUT" --docs "$OUT" --only 2 --hop 20000 > "$OUT/bench.txt" 2> "$OUT/bench-err.txt" &
BENCH=$!
sleep 4   # past the hop figure's warm-up (the bench may start and stop other extension processes before it)
EXT=
for _ in $(seq 100); do
  # The oldest extension still running: the one serving figure 2's first rows.
  EXT=$(pgrep -o -P "$BENCH" -x makenaide-core || true)
  [ -n "$EXT" ] && kill -0 "$EXT" 2> /dev/null && break
  sleep 0.1
done
[ -n "$EXT" ] || { echo "extension not found"; kill "$BENCH"; exit 1; }
perf record -e cpu-clock -F 2999 --call-graph dwarf,16384 -p "$EXT" -o "$OUT/perf.data" -- sleep 3 2> "$OUT/perf-record.txt" || { echo "perf record failed:"; cat "$OUT/perf-record.txt"; }
timeout 3 strace -f -c -p "$EXT" -o "$OUT/strace-summary.txt" || true
timeout 1 strace -f -tt -p "$EXT" -o "$OUT/strace-trace.txt" || true
# The client side (the bench process runs the functions' client, CoreClient, on one current-thread runtime).
timeout 1 strace -f -tt -p "$BENCH" -o "$OUT/strace-client.txt" || true
wait "$BENCH" || true
perf report -i "$OUT/perf.data" --no-children --sort dso --stdio > "$OUT/perf-dso.txt" 2> /dev/null
perf report -i "$OUT/perf.data" --no-children --sort sym --stdio -g none > "$OUT/perf-sym.txt" 2> /dev/null
perf report -i "$OUT/perf.data" --children --sort sym --stdio -g none > "$OUT/perf-children.txt" 2> /dev/null
grep -E "select 1|ping|direct" "$OUT/bench.txt" | head -8

# The Upbit mirror path: a short run (hop 10 per row, so figure 2's component table of 300 candle GETs and 300
# upserts through the extension is most of what its extension serves), the whole bench traced (-f follows the
# extension processes it spawns). Per extension process: the candle GETs it read and its syscalls.
MAKENAIDE_BIN_DIR=$BIN strace -f -o "$OUT/strace-upbit.txt" "$ROOT/target/release/makenaide-bench" --python "$ROOT/bench-out/venv/bin/python" \
  --out "$OUT/upbit" --docs "$OUT/upbit" --only 2 --hop 10 > "$OUT/bench-upbit.txt" 2>&1 || true
for pid in $(grep 'execve(".*/makenaide-core"' "$OUT/strace-upbit.txt" | awk '{print $1}'); do
  gets=$(grep -c "^$pid .*recvfrom.*\"GET /[a-z0-9/]*candles" "$OUT/strace-upbit.txt" || true)
  [ "$gets" -gt 0 ] || continue
  echo "upbit mirror path: extension $pid read $gets candle GETs; its syscalls (all requests of the run):"
  grep "^$pid " "$OUT/strace-upbit.txt" | awk '{print $2}' | sed 's/(.*//' | sort | uniq -c | sort -rn | head -8
  echo "one candle GET (the 100th), syscall by syscall, up to its reply to the function:"
  grep "^$pid " "$OUT/strace-upbit.txt" | grep -v "unfinished \.\.\.>" \
    | awk -v n=100 '/"GET \/[a-z0-9\/]*candles/ && !/writev/ { k++ } k == n { print; if (/writev/ && /HTTP\/1.1 200/) exit }' \
    | cut -c1-110
  echo "a /db/query (the 100th POST), syscall by syscall, up to its reply:"
  grep "^$pid " "$OUT/strace-upbit.txt" | grep -v "unfinished \.\.\.>" \
    | awk -v n=100 '/"POST \/db\/query/ { k++ } k == n { print; if (/writev/ && /HTTP\/1.1 200/) exit }' \
    | cut -c1-110
done
