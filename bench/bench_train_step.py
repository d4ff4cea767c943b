"""Where the time of a CPU training step goes: graph building, forward, backward, optimiser.

Runs ``igrec train``'s step (the same batches of similar prefix length, bf16 autocast, fused AdamW, the
same CPU settings) on the real Diginetica training cases for ``--steps`` steps per batch size, after a
warm-up, and prints milliseconds per step for each part, microseconds per case, and the epoch time it
implies. The network is a freshly initialised IGRec (the default config, or ``--set``): a step's cost does
not depend on the weights. Usage:

    python bench/bench_train_step.py [--batch-sizes 256 512] [--steps 200] [--threads 2] [--set dropout=0.2]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from model.cpu import configure_torch
from model.data import read_split, sessions_to_cases, split_validation
from model.graphs import build_global_graph
from model.train import (
    TrainConfig,
    batch_tensors,
    length_sorted_batches,
    make_model_config,
    parameter_groups,
    parse_model_options,
    set_prior_graphs,
)

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "diginetica" / "srgnn_split"
PARTS = ("graphs", "forward", "backward", "optimiser")
WARMUP = 5


def time_steps(net, fit, batch_size: int, steps: int, lr: float, prior_graph=None) -> dict[str, float]:
    """Mean seconds per step of each part over ``steps`` steps (after ``WARMUP`` untimed ones);
    ``prior_graph``: each fit case's training co-occurrence graph when the network has the prior."""
    import torch

    opt = torch.optim.AdamW(parameter_groups(net, lr, None, 1e-5), fused=True)
    batches = length_sorted_batches(fit, batch_size, np.random.default_rng(0))[: steps + WARMUP]
    totals = dict.fromkeys(PARTS, 0.0)
    net.train()
    for i, index in enumerate(tqdm(batches, desc=f"batch {batch_size}", mininterval=2.0)):
        t0 = time.perf_counter()
        inputs, target = batch_tensors(fit, index, 50, False, "cpu")
        graph = None if prior_graph is None else torch.from_numpy(prior_graph[index])
        t1 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = -net.log_likelihood(target, *inputs, prior_graph=graph).float().mean()
        t2 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        t3 = time.perf_counter()
        opt.step()
        t4 = time.perf_counter()
        if i >= WARMUP:
            for part, seconds in zip(PARTS, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
                totals[part] += seconds
    n = len(batches) - WARMUP
    return {part: seconds / n for part, seconds in totals.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(DEFAULT_DATA), help="split folder (default: Diginetica)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[256, 512])
    p.add_argument("--steps", type=int, default=200, help="timed steps per batch size")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--lr", type=float, default=4e-3)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="model option, as in train")
    args = p.parse_args()

    import torch

    from model.network import build_network

    configure_torch(args.threads)
    cfg = TrainConfig(data=args.data, model=parse_model_options(args.set))
    split = read_split(args.data)
    fit_sessions, _ = split_validation(split.train, cfg.val_fraction)
    fit = sessions_to_cases(fit_sessions)
    mcfg = make_model_config(cfg, split.n_items)
    graph = build_global_graph(fit_sessions, split.n_items, mcfg.global_neighbors) if mcfg.use_global else None
    rows = []
    for batch_size in args.batch_sizes:
        torch.manual_seed(0)
        net = build_network(mcfg)
        if graph is not None:
            net.set_global_graph(graph.neighbors, graph.weights)
        prior = set_prior_graphs(net, mcfg, fit_sessions, fit, split.n_items) if mcfg.use_prior else None
        rows.append((batch_size, time_steps(net, fit, batch_size, args.steps, args.lr, prior)))

    print(f"\n{split.name}: {len(fit):,} cases per epoch, {split.n_items:,} items, {args.threads} threads, "
          f"{args.steps} steps per row")
    print("| batch | " + " | ".join(f"{part} ms" for part in PARTS) + " | step ms | us per case | epoch s |")
    print("|---" * (len(PARTS) + 4) + "|")
    for batch_size, parts in rows:
        step = sum(parts.values())
        print(f"| {batch_size} | " + " | ".join(f"{1000 * parts[part]:.1f}" for part in PARTS)
              + f" | {1000 * step:.1f} | {1e6 * step / batch_size:.0f} | {step / batch_size * len(fit):.0f} |")


if __name__ == "__main__":
    main()
