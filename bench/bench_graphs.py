"""Throughput of numpy session-graph construction on real Diginetica test prefixes.

Prints graphs/s for batch sizes 1, 32 and 256 (the stream worker's micro-batches), for the current
session graph alone and with the history graph. Usage:

    python bench/bench_graphs.py [--data ../shared/data/diginetica/srgnn_split] [--seconds 2]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from model.data import read_test_tsv
from model.graphs import build_history_graphs, build_session_graphs

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "diginetica" / "srgnn_split"


def _rate(fn, batches: list, seconds: float, size: int) -> tuple[float, float]:
    """(graphs per second, median ms per batch) of ``fn`` over ``batches`` for about ``seconds``."""
    times: list[float] = []
    graphs = 0
    deadline = time.perf_counter() + seconds
    i = 0
    while time.perf_counter() < deadline or i < 3:
        batch = batches[i % len(batches)]
        t0 = time.perf_counter()
        fn(batch)
        times.append(time.perf_counter() - t0)
        graphs += size
        i += 1
    return graphs / sum(times), 1000 * float(np.median(times))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--max-len", type=int, default=50)
    args = parser.parse_args(argv)

    cases = read_test_tsv(args.data / "test.tsv")
    prefixes = cases.prefixes()
    rng = np.random.default_rng(0)
    print(f"{len(prefixes)} Diginetica test prefixes, mean length {cases.length.mean():.2f}")
    print(f"{'batch':>6} {'graphs/s':>12} {'ms/batch':>10} {'graphs/s +hist':>15} {'ms/batch +hist':>15}")
    for size in (1, 32, 256):
        order = rng.permutation(len(prefixes))
        batches = [[prefixes[j] for j in order[k : k + size]] for k in range(0, min(len(order), 2000 * size), size)]
        histories = [[[prefixes[j] for j in rng.integers(0, len(prefixes), 3)] for _ in b] for b in batches]
        rate, ms = _rate(lambda b: build_session_graphs(b, args.max_len), batches, args.seconds, size)
        pairs = list(zip(batches, histories, strict=True))
        rate_h, ms_h = _rate(
            lambda p: (build_session_graphs(p[0], args.max_len), build_history_graphs(p[1], args.max_len)),
            pairs,
            args.seconds,
            size,
        )
        print(f"{size:>6} {rate:>12,.0f} {ms:>10.3f} {rate_h:>15,.0f} {ms_h:>15.3f}")


if __name__ == "__main__":
    main()
