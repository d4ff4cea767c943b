"""HR@20 / MRR@20 of two checkpoints on the same test split, bucketed by how often the target item was clicked
in the training sessions (tail = rarely clicked). Writes a JSON table and a PNG bar chart.

    PYTHONPATH=. python bench/fusion_by_popularity.py --data DIR --checkpoints runs/X_id/best.pt runs/X_kg/best.pt \
        --labels id id+kg --out runs/X_popularity

Why: knowledge fusion should matter most for items with few clicks, whose id embeddings get few updates
but whose category/brand/seller is shared with frequent items.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

BUCKETS = ((0, 0), (1, 4), (5, 19), (20, 99), (100, None))


def bucket_name(lo: int, hi: int | None) -> str:
    return f">={lo}" if hi is None else (f"{lo}" if lo == hi else f"{lo}-{hi}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--checkpoints", nargs="+", required=True)
    p.add_argument("--labels", nargs="+", required=True)
    p.add_argument("--out", required=True, help="output prefix (.json and .png are added)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()

    import torch

    from model.data import item_counts, read_split
    from model.evaluate import evaluate_network, load_checkpoint

    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    split = read_split(args.data)
    counts = item_counts(split.train, split.n_items)[split.test.target]
    nets = [load_checkpoint(ckpt) for ckpt in args.checkpoints]
    table: dict[str, dict] = {}
    for lo, hi in BUCKETS:
        sel = np.flatnonzero((counts >= lo) & (counts <= (hi if hi is not None else np.inf)))
        row: dict = {"cases": len(sel)}
        if len(sel):
            for (net, train_cfg), label in zip(nets, args.labels, strict=True):
                m = evaluate_network(net, split.test.subset(sel), 512, "cpu", True, train_cfg.get("max_len", 50))
                row[label] = {"HR@20": m["HR@20"], "MRR@20": m["MRR@20"]}
        table[bucket_name(lo, hi)] = row
        print(bucket_name(lo, hi), json.dumps(row))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps(table, indent=2))
    plot(table, args.labels, Path(args.data).name, Path(args.out + ".png"))


def plot(table: dict, labels: list[str], name: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [k for k, v in table.items() if v["cases"]]
    x = np.arange(len(names))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, metric in zip(axes, ("HR@20", "MRR@20"), strict=True):
        for i, label in enumerate(labels):
            ax.bar(x + (i - (len(labels) - 1) / 2) * 0.38, [table[n][label][metric] for n in names], 0.38,
                   label=label)
        ax.set_xticks(x, [f"{n}\n({table[n]['cases']})" for n in names])
        ax.set(xlabel="training clicks of the target item (test cases)", ylabel=f"{metric} (%)",
               title=f"{name}: {metric} by target popularity")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
