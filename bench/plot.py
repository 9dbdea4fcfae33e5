"""Draws docs/benchmarks.png from bench-out/results.json (written by makenaide-bench).

usage: plot.py RESULTS_JSON OUT_PNG
"""

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {"a": "#2a9d8f", "b": "#e76f51", "c": "#8d99ae", "a-off": "#83c5be", "d": "#264653", "e": "#f4a261"}
SHORT = {"a": "(a) makenaide-core", "b": "(b) Python\nbaseline", "c": "(c) Rust,\nno extension", "a-off": "(a) metrics\noff",
         "d": "(d) in-process\nfloor", "e": "(e) Python\non the layer"}


def hop_label(name):
    """Short label of a figure-2 row."""
    if "wire shape" in name:
        return "direct,\next. wire shape"
    if "`BEGIN` pipelined" in name:
        return "direct,\nBEGIN..COMMIT"
    short = name.split(" (")[0].replace("extension ", "ext ").replace("`select 1`", "").replace("GET ", "")
    return short.replace(", MAKENAIDE_METRICS=off", "\nmetrics off").replace(", ", ",\n").strip()



def bars(ax, labels, values, colors, fmt, title, ylabel, log=False):
    x = range(len(values))
    ax.bar(x, values, color=colors)
    ax.set_xticks(list(x))
    ax.set_xticklabels(labels, fontsize=7)
    ax.set_title(title, fontsize=9)
    ax.set_ylabel(ylabel, fontsize=8)
    if log:
        ax.set_yscale("log")
    for i, v in enumerate(values):
        ax.annotate(fmt.format(v), (i, v), ha="center", va="bottom", fontsize=7)


def main(src, dst):
    with open(src) as f:
        r = json.load(f)
    fig, axes = plt.subplots(2, 3, figsize=(13, 7.5))
    ax = axes.flatten()

    w = r.get("warm")
    if w:
        keys = [v["key"] for v in w["variants"]]
        labels = [SHORT[k] for k in keys]
        p50 = [v["summary"]["p50_us"] / 1000 for v in w["variants"]]
        p99 = [v["summary"]["p99_us"] / 1000 for v in w["variants"]]
        xs = range(len(keys))
        ax[0].bar([x - 0.2 for x in xs], p50, 0.4, color=[COLORS[k] for k in keys], label="p50")
        ax[0].bar([x + 0.2 for x in xs], p99, 0.4, color=[COLORS[k] for k in keys], alpha=0.5, label="p99")
        for x, v in zip(xs, p50):
            ax[0].annotate(f"{v:.2f}", (x - 0.2, v), ha="center", va="bottom", fontsize=7)
        ax[0].set_xticks(list(xs))
        ax[0].set_xticklabels(labels, fontsize=7)
        ax[0].set_yscale("log")
        ax[0].set_ylabel("ms (log)", fontsize=8)
        ax[0].set_title(f"1. Warm invocation p50 / p99 — (b)/(a) = {w['ratio_b_over_a_p50']:.1f}×", fontsize=9)
        ax[0].legend(fontsize=7)

    h = r.get("hop")
    if h:
        labels = [hop_label(row["name"]) for row in h["rows"]]
        vals = [row["summary"]["p50_us"] for row in h["rows"]]
        cols = [COLORS["a"] if row["name"].startswith("extension") else COLORS["c"] for row in h["rows"]]
        bars(ax[1], labels, vals, cols, "{:.0f}",
             f"2. select 1 p50 (µs) — extension adds {h['added_p50_us']:+.0f} µs", "µs")
        for i, t in enumerate(ax[1].get_xticklabels()):
            t.set_fontsize(5.5)
            t.set_y(-0.02 - 0.06 * (i % 2))

    c = r.get("cold")
    if c:
        keys = [v["key"] for v in c["variants"]]
        bars(ax[2], [SHORT[k] for k in keys], [v["first_response_ms"] for v in c["variants"]],
             [COLORS[k] for k in keys], "{:.0f}",
             f"3. Cold start: spawn → first response (median ms)\nextension registered {c['ext_spawn_to_registered_ms']:.1f} ms after spawn",
             "ms")

    t = r.get("throughput")
    if t:
        names = ["makenaide-core" if i == 0 else "old: serial + sleep" for i in range(len(t["runs"]))]
        walls = [run["wall_s"] for run in t["runs"]]
        bars(ax[3], names, walls, [COLORS["a"], COLORS["b"]][: len(walls)], "{:.1f} s", "", "wall s")
        ax[3].axhline(t["bound_s"], color="black", linestyle="--", linewidth=1)
        ax[3].annotate(f"bound {t['bound_s']:.0f} s", (0.5, t["bound_s"]), fontsize=7, va="bottom")
        detail = "; ".join(
            f"{n}: {run['responses_429']}×429, rows {run['rows_stored']}/{run['rows_expected']}"
            for n, run in zip(names, t["runs"])
        )
        ax[3].set_title("4. 230 markets at 10 req/s\n" + detail.replace("; old", ";\nold"), fontsize=8)

    b = r.get("bulk")
    if b:
        labels = ["ext\n5k rows/stmt", "ext\n1k rows/stmt", "Rust\nrow-by-row", "Python\nrow-by-row"][: len(b["runs"])]
        bars(ax[4], labels, [run["rows_per_s"] for run in b["runs"]],
             [COLORS["a"], COLORS["a"], COLORS["c"], COLORS["b"]][: len(b["runs"])], "{:.0f}",
             f"5. Bulk storage, {b['rows_target']} rows (rows/s, log)", "rows/s", log=True)

    peaks = r.get("memory_peaks") or []
    if peaks:
        labels = [p["process"].replace("function ", "fn\n").replace("extension ", "ext\n")
                  .replace("makenaide-data-collector", "collector").replace("bench-direct-collector", "direct (c)")
                  .replace("Python baseline", "Python (b)").replace("Python collector on the layer", "Python (e)")
                  for p in peaks]
        vals = [p["peak_kib"] / 1024 for p in peaks]
        cols = [COLORS["e"] if "on the layer" in p["process"] else COLORS["b"] if "Python" in p["process"]
                else COLORS["a"] if "makenaide" in p["process"] else COLORS["c"] for p in peaks]
        bars(ax[5], labels, vals, cols, "{:.1f}", "6. Peak RSS (MiB); goals 15 / 8 MiB", "MiB")
        ax[5].axhline(15, color="black", linestyle=":", linewidth=1)
        ax[5].axhline(8, color="black", linestyle="--", linewidth=1)

    m = r.get("machine", {})
    fig.suptitle(f"makenaide-core benchmarks — {m.get('cpu', '')}, {m.get('cpus', '')} vCPU — {r.get('generated_at', '')}",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(dst, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
