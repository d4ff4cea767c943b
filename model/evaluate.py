"""``igrec evaluate``: rank all items for every test case with a checkpoint or a baseline; one metrics module.

Baselines without training (POP, SKNN) live in :mod:`model.baselines`; trained ones (SR-GNN, GRU4Rec)
are checkpoints of ``igrec train --arch srgnn|gru4rec`` and are evaluated exactly like igrec.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from model.data import Cases
from model.metrics import RankAccumulator


def evaluate_network(net, cases: Cases, batch_size: int, device, bf16: bool, max_len: int,
                     binary_adj: bool = False) -> dict[str, float]:
    """HR/MRR/NDCG@{10,20} of a torch network over ``cases`` (eval mode, no grad)."""
    import torch

    from model.network import frozen_items
    from model.train import batch_tensors

    was_training = net.training
    net.eval()
    acc = RankAccumulator()
    order = np.argsort(cases.length, kind="stable")
    with torch.inference_mode(), frozen_items(net):
        for i in range(0, len(order), batch_size):
            index = order[i : i + batch_size]
            inputs, target = batch_tensors(cases, index, max_len, binary_adj, device)
            with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
                scores = net(*inputs)
            acc.add(scores.float().cpu().numpy(), target.cpu().numpy())
    net.train(was_training)
    return acc.result()


def load_checkpoint(path: str | Path, device: str = "cpu"):
    """(network, train config dict) from a ``best.pt`` / ``checkpoint.pt`` (``weights_only=True``)."""
    import torch

    from model.multimodal import item_encoder_from_state
    from model.network import ModelConfig, build_network

    state = torch.load(path, weights_only=True, map_location=device)
    net = build_network(ModelConfig.from_dict(state["config"]), item_encoder_from_state(state))
    net.load_state_dict(state["model"])
    return net.to(device).eval(), state.get("train", {})


def evaluate(args: argparse.Namespace) -> dict:
    """Evaluate a checkpoint (``--checkpoint``) or a baseline (``--baseline pop|sknn``) on the test cases."""
    from model.train import load_dataset

    split = load_dataset(args.data, args.raw_format)
    t0 = time.perf_counter()
    if args.baseline:
        from model.baselines import evaluate_baseline

        metrics = evaluate_baseline(args.baseline, split, k=args.sknn_k, sample=args.sknn_sample)
        name = args.baseline
    else:
        from model.cpu import configure_torch

        configure_torch(args.threads)
        net, train_cfg = load_checkpoint(args.checkpoint, args.device)
        metrics = evaluate_network(net, split.test, args.batch_size, args.device, args.bf16,
                                   train_cfg.get("max_len", 50), train_cfg.get("binary_adj", False))
        name = str(args.checkpoint)
    seconds = time.perf_counter() - t0
    print(f"{name} on {split.name} ({len(split.test)} cases, {seconds:.0f}s): " +
          " ".join(f"{k} {v:.2f}" for k, v in metrics.items() if k != "cases"))
    result = {"model": name, "dataset": split.name, "data": args.data, "metrics": metrics, "seconds": seconds}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))
    return result


def add_evaluate_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of ``igrec evaluate``: the test split of ``--data`` ranked by a checkpoint or a baseline."""
    p.add_argument("--data", required=True, help="split folder whose test.tsv is ranked (or a raw log)")
    p.add_argument("--raw-format", choices=["diginetica", "yoochoose", "csv"],
                   help="read --data as a raw log with the SR-GNN preprocessing")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--checkpoint", help="best.pt or checkpoint.pt of a training run")
    group.add_argument("--baseline", choices=["pop", "sknn"],
                      help="pop: most clicked items; sknn: session-kNN over the training sessions")
    p.add_argument("--sknn-k", type=int, default=100, help="SKNN neighbours")
    p.add_argument("--sknn-sample", type=int, default=1000, help="SKNN candidate sessions (most recent)")
    p.add_argument("--batch-size", type=int, default=512, help="test cases per step")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: all cores)")
    p.add_argument("--no-bf16", dest="bf16", action="store_false",
                   help="no bf16 autocast for the graph network (the all-item scores stay float32)")
    p.add_argument("--out", help="write the metrics JSON here")
