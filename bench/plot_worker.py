"""Plot event -> recommendation latency against the offered rate for runs of `bench_worker.py --json`.

One colour per run: p99 (solid) and p50 (dotted) at each offered rate, and the run's flat-out throughput as a
vertical line; issue 6's target (5,000 events/s at p99 <= 50 ms) in grey. Give it runs of different models
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
    """The legend entry of a run: its artefact's folder name, item dimension and test HR@20 where known."""
    parts = [Path(run["artefact"]).name]
    if run.get("model", {}).get("dim"):
        parts.append(f"D={run['model']['dim']}")
    if run.get("test", {}).get("HR@20") is not None:
        parts.append(f"HR@20 {run['test']['HR@20']:.2f}")
    return ", ".join(parts)


def plot_runs(path: Path, runs: list[dict], title: str = "igrec, one worker on this machine") -> None:
    """Draw ``runs`` (the dicts `bench_worker.py --json` writes) into the PNG ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    fig, ax = plt.subplots(figsize=(9.6, 4.4))
    widest = TARGET_RATE
    for index, run in enumerate(runs):
        colour = f"C{index}"
        offered = [phase["offered"] for phase in run["phases"]]
        ax.plot(offered, [phase["p99_ms"] for phase in run["phases"]], "s-", color=colour,
                label=f"p99, {label(run)}")
        ax.plot(offered, [phase["p50_ms"] for phase in run["phases"]], "o:", color=colour, ms=3, lw=1,
                label="p50")
        flat_out = run["flat_out"]["events_per_s"]
        ax.axvline(flat_out, color=colour, lw=0.8, ls="-.", label=f"flat out {flat_out:,.0f}/s")
        widest = max(widest, flat_out, *offered)
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
