"""``igrec search``: train every point of a declared hyper-parameter grid, print a results table.

The grid is a JSON object of lists; keys are :class:`model.train.TrainConfig` fields (``lr``,
``lr_embedding``, ``batch_size``, ...) or :class:`model.network.ModelConfig` fields (``steps``,
``interests``, ``dropout``, ...). Each point trains in its own run folder under ``--out``; the table
lists validation HR@20 / MRR@20 of the best epoch (test numbers are in each run's results.json).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
from pathlib import Path

DEFAULT_GRID = {
    "steps": [1, 2],
    "interests": [1, 3],
    "dropout": [0.0, 0.2],
    "lr": [1e-3, 3e-3],
    "lr_embedding": [1e-3, 3e-3],
}


def grid_points(grid: dict[str, list]) -> list[dict]:
    """Cartesian product of the grid's lists, as a list of {key: value}."""
    keys = list(grid)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*(grid[k] for k in keys))]


def search(args: argparse.Namespace) -> list[dict]:
    """Run the grid; return and print one row per point, best validation HR@20 first."""
    from model.train import TrainConfig, config_from_args, train

    grid = json.loads(Path(args.grid).read_text()) if args.grid else DEFAULT_GRID
    base = config_from_args(args)
    if base.val_fraction <= 0:
        raise SystemExit("igrec search ranks the points by validation HR@20: --val-fraction must be above 0")
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    rows = []
    for i, point in enumerate(grid_points(grid)):
        model_opts = {**base.model, **{k: v for k, v in point.items() if k not in train_fields}}
        run_opts = {k: v for k, v in point.items() if k in train_fields}
        cfg = dataclasses.replace(base, out=str(Path(args.out) / f"point{i:03d}"), model=model_opts,
                                  test_each_epoch=False, **run_opts)
        res = train(cfg)
        best = next(h for h in res["history"] if h["epoch"] == res["best_epoch"])
        rows.append({**point, "val HR@20": best["val"]["HR@20"], "val MRR@20": best["val"]["MRR@20"],
                     "epoch s": res["mean_epoch_seconds"], "run": cfg.out})
    rows.sort(key=lambda r: -r["val HR@20"])
    print_table(rows)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "search.json").write_text(json.dumps(rows, indent=2))
    return rows


def print_table(rows: list[dict]) -> None:
    if not rows:
        return
    cols = list(rows[0])
    cells = [[f"{r[c]:.4g}" if isinstance(r[c], float) else str(r[c]) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    print("  ".join(c.rjust(w) for c, w in zip(cols, widths, strict=True)))
    for row in cells:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)))


def add_search_arguments(p: argparse.ArgumentParser) -> None:
    from model.train import add_train_arguments

    add_train_arguments(p)
    p.add_argument("--grid", help="JSON file {key: [values]}; default: steps x interests x dropout x lrs")
    p.set_defaults(out="runs/search", epochs=2, max_train_cases=100_000)
