"""Plot event -> recommendation latency against the offered rate for runs of `bench_worker.py --json`.

One colour per model: p99 (solid) and p50 (dotted) at each offered rate, and the flat-out throughput as a
vertical line; several runs of one artefact make one line (medians, the range of p99 shaded). Issue 6's
target (5,000 events/s at p99 <= 50 ms) in grey. Give it runs of different models
(say, item dimensions 32, 64 and 100) on one machine to see what each costs in capacity; the legend names
each run's model and its test HR@20 from the artefact's card.

    python bench/plot_worker.py d32.json d64.json d100.json --out docs/worker_models.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import orjson

TARGET_RATE = 5_000
"""Issue 6's target: events/s of one worker on the 2-core machine, with p99 at most :data:`TARGET_P99_MS`."""
TARGET_P99_MS = 50


def label(run: dict) -> str:
    """The legend entry of a run: its artefact's folder name, item dimension and test HR@20 where known, and
    the worker's nice value where it ran under one."""
    parts = [Path(run["artefact"]).name]
    if run.get("model", {}).get("dim"):
        parts.append(f"D={run['model']['dim']}")
    if run.get("test", {}).get("HR@20") is not None:
        parts.append(f"HR@20 {run['test']['HR@20']:.2f}")
    if run.get("worker_nice"):
        parts.append(f"nice {run['worker_nice']:+d}")
    return ", ".join(parts)


def plot_runs(path: Path, runs: list[dict], title: str = "igrec, one worker on this machine") -> None:
    """Draw ``runs`` (the dicts `bench_worker.py --json` writes) into the PNG ``path``. Runs of one artefact
    at the same rates are drawn as one: the median of each percentile, and the range of p99 shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        groups.setdefault((label(run), tuple(phase["offered"] for phase in run["phases"])), []).append(run)
    fig, ax = plt.subplots(figsize=(9.6, 4.4))
    widest = TARGET_RATE
    for index, ((name, offered), members) in enumerate(groups.items()):
        colour = f"C{index}"
        p99 = np.array([[phase["p99_ms"] for phase in run["phases"]] for run in members])
        p50 = np.array([[phase["p50_ms"] for phase in run["phases"]] for run in members])
        runs_note = f" ({len(members)} runs)" if len(members) > 1 else ""
        ax.plot(offered, np.median(p99, 0), "s-", color=colour, label=f"p99, {name}{runs_note}")
        if len(members) > 1:
            ax.fill_between(offered, p99.min(0), p99.max(0), color=colour, alpha=0.15, lw=0)
        ax.plot(offered, np.median(p50, 0), "o:", color=colour, ms=3, lw=1, label="p50")
        flat_out = [run["flat_out"]["events_per_s"] for run in members]
        span = f"{min(flat_out):,.0f}-{max(flat_out):,.0f}" if len(members) > 1 else f"{flat_out[0]:,.0f}"
        ax.axvline(float(np.median(flat_out)), color=colour, lw=0.8, ls="-.", label=f"flat out {span}/s")
        widest = max(widest, *flat_out, *offered)
    ax.axhline(TARGET_P99_MS, color="grey", lw=0.8, ls=":", label=f"target p99 {TARGET_P99_MS} ms")
    ax.axvline(TARGET_RATE, color="grey", lw=0.8, ls="--", label=f"target {TARGET_RATE:,}/s")
    ax.set(xlabel="offered events/s", ylabel="event -> recommendation latency (ms)", yscale="log",
           title=title, xlim=(0, widest * 1.05))
    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path, nargs="+", metavar="RUN.json", help="files of `bench_worker.py --json`")
    parser.add_argument("--out", type=Path, required=True, metavar="PNG", help="where to write the plot")
    parser.add_argument("--title", default="igrec, one worker on this machine", help="the plot's title")
    args = parser.parse_args()
    plot_runs(args.out, [orjson.loads(path.read_bytes()) for path in args.runs], args.title)
    print(f"plot: {args.out}")


if __name__ == "__main__":
    main()
