"""PyTorch eager against onnxruntime on the same igrec model and the same Diginetica test prefixes.

For batch sizes 1, 32 and 256 (the worker's micro-batches) it prints p50/p99 latency and sessions/s of
scoring a batch of ready session graphs into top-20 lists: PyTorch eager float32 (the computation that the
artefact's graph holds, ``IGRec.top_k``; inference mode, the item table prepared once:
``model.network.frozen_items``) against the exported artefact in :class:`export.scorer.Scorer` (CPU
provider). Each runs the batch as one padded tensor and, as the worker's Scorer does by default, in size
buckets (sub-batches of similar graph size: less padding work; the network part per bucket and the item
head in row slices, see :mod:`export.split`); the ratio of a runtime is taken against PyTorch with the same
batching, so it measures the runtime, not the batching. All use the same thread count; runs alternate
between them so that load from other processes hits all alike. It also counts the cases whose top-20 lists
differ from PyTorch's (same batch).

On a GPU (``--provider cuda``) PyTorch runs on the GPU too, both in full float32 (TF32 off on both
sides), each call starting from the numpy graphs on the host and ending with the top-K lists back on it;
batch 4096 is added, and ``--fp16`` adds onnxruntime with the item product in float16. On the CPU ``--int8``
adds onnxruntime with the int8 item product (:mod:`export.precision`; the worker's ``--int8``).

The model is a checkpoint (``--checkpoint``) or, without one, a Diginetica-sized IGRec with seeded random
weights (43,097 items, the default config, the global graph built from the real training sessions):
inference cost does not depend on the weights. Usage:

    python bench/bench_scorer.py [--checkpoint runs/dig_igrec/best.pt] [--threads 2] [--json out.json]
    python bench/bench_scorer.py --provider cuda [--fp16] ...
    python bench/bench_scorer.py --int8 ...
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "diginetica" / "srgnn_split"
DIGINETICA_ITEMS = 43_097
ITERATIONS = {1: 300, 32: 60, 256: 20, 4096: 10}


def random_checkpoint(path: Path, data: Path, seed: int) -> None:
    """A Diginetica-sized IGRec checkpoint with seeded random weights and the real global graph."""
    import torch

    from model.data import read_split
    from model.graphs import build_global_graph
    from model.network import ModelConfig, build_network

    split = read_split(data)
    config = ModelConfig(n_items=max(split.n_items, DIGINETICA_ITEMS))
    torch.manual_seed(seed)
    net = build_network(config)
    graph = build_global_graph(split.train, config.n_items, config.global_neighbors)
    net.set_global_graph(graph.neighbors, graph.weights)
    torch.save(
        {
            "model": net.state_dict(),
            "config": config.to_dict(),
            "train": {"data": str(data), "max_len": config.max_len},
        },
        path,
    )


def batches_of(data: Path, size: int, count: int, max_len: int, binary: bool, seed: int) -> list:
    """``count`` batches of ``size`` random real test prefixes, as session graphs."""
    from model.data import read_test_tsv
    from model.graphs import build_session_graphs

    cases = read_test_tsv(data / "test.tsv")
    rng = np.random.default_rng(seed + size)
    return [
        build_session_graphs(cases.padded(rng.choice(len(cases), size, replace=False), max_len), binary=binary)
        for _ in range(count)
    ]


def torch_runner(net, k: int, bucket: bool, device: str = "cpu"):
    """PyTorch eager float32 top-``k`` of a batch of graphs on ``device`` (inputs copied there, top-K indices
    copied back, which waits for the GPU): one padded batch through what the artefact's graph computes
    (``net.top_k`` where the network has it, as IGRec does, else ``net(...)`` then ``torch.topk``); or,
    with ``bucket``, batched as the Scorer batches: on the CPU a network with an item head (IGRec) runs
    ``head_inputs`` per size bucket and ``head`` over every row in the Scorer's row slices
    (``export.split``, ``export.scorer.HEAD_ROWS``); on a GPU, or for a network without a head, ``net(...)``
    runs per bucket."""
    import torch
    import torch.nn.functional as F

    from export.scorer import row_slices, size_buckets, trim_graphs

    def tensors(g) -> list:
        return [torch.from_numpy(np.ascontiguousarray(a)).to(device) for a in g.arrays()]

    def topk(g) -> np.ndarray:
        with torch.inference_mode():
            if hasattr(net, "top_k"):
                return net.top_k(k, *tensors(g))[0].cpu().numpy()
            return torch.topk(net(*tensors(g)), k, dim=-1).indices.cpu().numpy()

    def stacked(parts: list) -> torch.Tensor | None:
        if parts[0] is None:
            return None
        width = max(p.shape[1] for p in parts)
        return torch.cat([F.pad(p, (0, width - p.shape[1])) for p in parts])

    def split(g, groups: list[np.ndarray]) -> np.ndarray:
        with torch.inference_mode():
            trimmed = [tensors(trim_graphs(g, rows)) for rows in groups]
            parts = [net.head_inputs(*t) for t in trimmed]
            inputs = type(parts[0])(*(stacked([p[j] for p in parts]) for j in range(len(parts[0]))))
            items = stacked([t[0] for t in trimmed])
            top = torch.cat([net.head(k, items[a:z], type(inputs)(*(None if v is None else v[a:z] for v in inputs)))[0]
                             for a, z in row_slices(len(items))]).cpu().numpy()
        out = np.empty_like(top)
        out[np.concatenate(groups)] = top
        return out

    def run(g) -> np.ndarray:
        groups = size_buckets(g) if bucket else [np.arange(g.batch_size)]
        if len(groups) == 1:
            return topk(g)
        if hasattr(net, "head") and device == "cpu":
            return split(g, groups)
        out = np.empty((g.batch_size, k), np.int64)
        for rows in groups:
            out[rows] = topk(trim_graphs(g, rows))
        return out

    return run


def measure(runners: dict, graphs_list: list, iterations: int) -> dict:
    """Run every runner on the same batches, alternating between them; latencies (s) and the number of
    cases whose top-K differs from the first runner's (the reference)."""
    for g in graphs_list[:2]:
        for run in runners.values():
            run(g)
    times: dict[str, list[float]] = {name: [] for name in runners}
    differing = dict.fromkeys(runners, 0)
    cases = 0
    for i in range(iterations):
        g = graphs_list[i % len(graphs_list)]
        reference = None
        for name, run in runners.items():
            t0 = time.perf_counter()
            items = run(g)
            times[name].append(time.perf_counter() - t0)
            if reference is None:
                reference = items
            elif i < len(graphs_list):
                differing[name] += int((items != reference).any(1).sum())
        cases += g.batch_size if i < len(graphs_list) else 0
    return {"times": times, "differing": differing, "compared": cases}


BASELINE = {
    "torch": "torch",
    "torch + buckets": "torch + buckets",
    "onnxruntime": "torch",
    "onnxruntime + buckets": "torch + buckets",
    "onnxruntime fp16": "torch",
    "onnxruntime fp16 + buckets": "torch + buckets",
    "onnxruntime int8": "torch",
    "onnxruntime int8 + buckets": "torch + buckets",
}
"""The PyTorch row each runtime's ratio is taken against: the same batching, so the ratio is the runtime's."""


def summarise(size: int, result: dict) -> dict:
    row: dict = {"batch": size, "top20_compared": result["compared"]}
    for name, t in result["times"].items():
        arr = np.asarray(t)
        row[name] = {
            "p50_ms": 1000 * float(np.percentile(arr, 50)),
            "p99_ms": 1000 * float(np.percentile(arr, 99)),
            "sessions_per_s": size * len(arr) / float(arr.sum()),
            "runs": len(arr),
            "top20_differing": result["differing"][name],
        }
    for name in result["times"]:
        row[name]["speedup"] = row[name]["sessions_per_s"] / row[BASELINE[name]]["sessions_per_s"]
    return row


def print_table(rows: list[dict]) -> None:
    """One line per (batch, runtime): latency percentiles, throughput, ratio to torch, top-20 mismatches."""
    head = (
        f"{'batch':>5}  {'runtime':<26} {'p50 ms':>8} {'p99 ms':>8} {'sessions/s':>10} {'x torch':>8} "
        f"{'top-20 differ':>14}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        for name in (n for n in r if isinstance(r[n], dict)):
            m = r[name]
            ratio = f"{m['speedup']:.2f}x"
            differ = f"{m['top20_differing']} / {r['top20_compared']}" if name != "torch" else "reference"
            print(
                f"{r['batch']:>5}  {name:<26} {m['p50_ms']:>8.2f} {m['p99_ms']:>8.2f} {m['sessions_per_s']:>10.0f} "
                f"{ratio:>8} {differ:>14}"
            )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, help="a training checkpoint (default: random Diginetica-sized)")
    parser.add_argument("--artefact", type=Path, help="an exported artefact of --checkpoint (skip the export)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="Diginetica split folder (test prefixes)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for both runtimes")
    parser.add_argument("--provider", choices=["cpu", "cuda", "tensorrt"], default="cpu",
                        help="onnxruntime execution provider; with a GPU one, PyTorch runs on the GPU too")
    parser.add_argument("--fp16", action="store_true", help="add onnxruntime with the float16 item product (GPU)")
    parser.add_argument("--int8", action="store_true", help="add onnxruntime with the int8 item product (CPU)")
    parser.add_argument("--batches", help="comma-separated batch sizes (default: 1,32,256; on a GPU also 4096)")
    parser.add_argument("--iterations", type=float, default=1.0, help="multiplier of the per-batch run counts")
    parser.add_argument("--spin", action="store_true", help="let onnxruntime threads spin between runs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write the rows here")
    args = parser.parse_args(argv)

    import onnxruntime as ort
    import torch

    from export.exporter import ExportOptions, build_artefact, load_network
    from export.scorer import Scorer
    from model.network import frozen_items

    gpu = args.provider != "cpu"
    if args.fp16 and not gpu:
        parser.error("--fp16 needs a GPU provider (--provider cuda or tensorrt)")
    if args.int8 and gpu:
        parser.error("--int8 is for the CPU provider")
    device = "cuda" if gpu else "cpu"
    batches = args.batches or ("1,32,256,4096" if gpu else "1,32,256")
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    with tempfile.TemporaryDirectory(prefix="bench_scorer_") as tmp:
        checkpoint = args.checkpoint
        if checkpoint is None:
            checkpoint = Path(tmp) / "random.pt"
            random_checkpoint(checkpoint, args.data, args.seed)
        artefact = args.artefact
        if artefact is None:
            artefact, report = build_artefact(
                ExportOptions(
                    checkpoint=str(checkpoint),
                    out=str(Path(tmp) / "art"),
                    data=str(args.data),
                    parity_cases=2000,
                    threads=args.threads,
                )
            )
            print(report.summary())
        net, _ = load_network(checkpoint)
        net = net.to(device)
        top = max(int(b) for b in batches.split(","))

        def scorer(bucket: bool, fp16: bool = False, int8: bool = False) -> Scorer:
            return Scorer(artefact, providers=args.provider, threads=args.threads, spin=args.spin, bucket=bucket,
                          fp16=fp16, int8=int8, max_batch=top)

        plain, bucketed = scorer(False), scorer(True)
        runners = {
            "torch": torch_runner(net, plain.k, bucket=False, device=device),
            "torch + buckets": torch_runner(net, plain.k, bucket=True, device=device),
            "onnxruntime": lambda g: plain.recommend(g)[0],
            "onnxruntime + buckets": lambda g: bucketed.recommend(g)[0],
        }
        if args.fp16:
            half, half_bucketed = scorer(False, fp16=True), scorer(True, fp16=True)
            runners["onnxruntime fp16"] = lambda g: half.recommend(g)[0]
            runners["onnxruntime fp16 + buckets"] = lambda g: half_bucketed.recommend(g)[0]
        if args.int8:
            quarter, quarter_bucketed = scorer(False, int8=True), scorer(True, int8=True)
            runners["onnxruntime int8"] = lambda g: quarter.recommend(g)[0]
            runners["onnxruntime int8 + buckets"] = lambda g: quarter_bucketed.recommend(g)[0]
        graphs = plain.card["graphs"]
        where = torch.cuda.get_device_name() if gpu else f"{platform.processor() or platform.machine()}"
        print(
            f"model: {checkpoint} ({plain.n_items:,} items, dim {net.config.dim}, interests "
            f"{net.config.interests}); {where}, {os.cpu_count()} cores, {args.threads} threads; "
            f"onnxruntime {ort.__version__} {plain.providers[0]}, torch {torch.__version__} on {device}"
        )
        print(f"load average before: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")
        rows = []
        with frozen_items(net):
            for size in (int(b) for b in batches.split(",")):
                iterations = max(3, int(ITERATIONS.get(size, 20) * args.iterations))
                data = batches_of(args.data, size, min(iterations, 20), graphs["max_len"], graphs["binary"],
                                  args.seed)
                rows.append(summarise(size, measure(runners, data, iterations)))
        print(f"load average after: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")
        print_table(rows)
        if args.json:
            args.json.write_text(
                json.dumps(
                    {
                        "rows": rows,
                        "load_after": os.getloadavg(),
                        "threads": args.threads,
                        "checkpoint": str(checkpoint),
                        "provider": plain.providers[0],
                        "device": where,
                    },
                    indent=2,
                )
            )


if __name__ == "__main__":
    main()
