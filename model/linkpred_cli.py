"""``igrec linkpred train|evaluate|predict|export-items``: argument parsing without torch.

torch is imported (through model.linkpred) only when a command runs.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import fields
from pathlib import Path

import numpy as np

from model.linkpred_data import LinkPredConfig


def add_linkpred_arguments(p: argparse.ArgumentParser) -> None:
    """Sub-commands ``train``, ``evaluate``, ``predict`` and ``export-items`` of ``igrec linkpred``."""
    sub = p.add_subparsers(dest="linkpred_command", required=True)
    tr = sub.add_parser(
        "train", help="train a link predictor, evaluate valid/test with the GATNE protocol",
        description="Trains the relational-GNN + DistMult link predictor on DATA: a GATNE folder (train.txt "
        "'type a b', valid/test.txt 'type a b label') or a session split folder with kg.txt (igrec's item "
        "graph: relations next and co_session held out, kg attributes as context). Writes OUT/best.pt, "
        "OUT/results.json (ROC-AUC, PR-AUC, AP, F1 per edge type and mean; filtered MRR) and OUT/curves.png.")
    tr.add_argument("--data", required=True, help="GATNE-format folder or session split folder (with kg.txt)")
    defaults = LinkPredConfig(data="")
    helps = {
        "out": "run folder", "dim": "embedding size", "layers": "message-passing rounds (RGCNConv)",
        "dropout": "dropout on node states between rounds", "epochs": "maximum epochs",
        "chunks": "train edges are split into this many supervision chunks per epoch (one step each)",
        "negatives": "corrupted edges per positive",
        "negatives_from": "corrupting nodes drawn from the relation's nodes ('relation') or all train nodes ('all')",
        "lr": "Adam learning rate", "weight_decay": "Adam L2",
        "patience": "epochs without a better valid ROC-AUC before stopping", "seed": "random seed",
        "threads": "torch CPU threads (1 on the shared machine)",
        "co_window": "item graph: co_session = items 2..N clicks apart (below 2: no co_session relation)",
        "with_kg": "item graph: kg.txt attributes as context edges (1/0)",
        "valid_share": "item graph: share of each relation held out for valid",
        "test_share": "item graph: share of each relation held out for test",
        "mrr_max_queries": "filtered MRR on a random subset of this many positives (default: all)",
    }
    for f in fields(LinkPredConfig):
        if f.name == "data":
            continue
        default = getattr(defaults, f.name)
        kind = {bool: lambda s: bool(int(s)), int: int, float: float}.get(type(default), str)
        if f.name in ("threads", "mrr_max_queries"):
            kind = int
        tr.add_argument("--" + f.name.replace("_", "-"), dest=f.name, type=kind, default=default,
                        help=f"{helps[f.name]} (default {default})")
    tr.set_defaults(linkpred_func=_train_command)
    ev = sub.add_parser("evaluate", help="GATNE-protocol metrics of a checkpoint on its data's valid/test",
                        description="Rebuilds the checkpoint's data from its config (or --data) and prints "
                        "ROC-AUC / PR-AUC / AP / F1 (mean over edge types) and filtered MRR.")
    ev.add_argument("checkpoint", help="a best.pt from `igrec linkpred train`")
    ev.add_argument("--data", help="a GATNE folder with the same nodes and relations (default: the training data)")
    ev.add_argument("--json", help="also write the metrics here")
    ev.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    ev.set_defaults(linkpred_func=_evaluate_command)
    pr = sub.add_parser("predict", help="write new predicted links as Fact JSON lines (RELATED {type, score})",
                        description="For each node and relation, the top-k unknown tails with probability >= "
                        "threshold become (Item)-[:RELATED {type, score}]->(Item) facts, one JSON object a line "
                        "with the fields head_label, head_id, rel, tail_label, tail_id, props.")
    pr.add_argument("checkpoint", help="a best.pt from `igrec linkpred train`")
    pr.add_argument("--out", required=True, help="facts.jsonl to write")
    pr.add_argument("--threshold", type=float, default=0.9, help="minimum sigmoid probability (default 0.9)")
    pr.add_argument("--top-k", type=int, default=5, help="at most this many new links a node and relation (default 5)")
    pr.add_argument("--relation", action="append", help="relation name to predict (repeatable; default: evaluated)")
    pr.add_argument("--label", default="Item", help="node label of both ends (default Item)")
    pr.add_argument("--prefix", default="", help="prefix for node ids (as `igrec kg load --prefix`)")
    pr.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    pr.set_defaults(linkpred_func=_predict_command)
    bl = sub.add_parser("baseline", help="GATNE-protocol metrics of a training-free heuristic (cn, pa)",
                        description="Scores the test pairs of DATA with common neighbours (cn) or preferential "
                        "attachment (pa) on the train graph, to show how hard a split is. numpy only.")
    bl.add_argument("--data", required=True, help="GATNE-format folder or session split folder")
    bl.add_argument("--kind", choices=["cn", "pa"], default="cn")
    bl.set_defaults(linkpred_func=_baseline_command)
    ex = sub.add_parser("export-items", help="write igrec's item graph hold-out as a GATNE folder",
                        description="Builds the multiplex item graph of a session split folder (see train) and "
                        "writes train.txt / valid.txt / test.txt in the GATNE format.")
    ex.add_argument("--data", required=True, help="session split folder with train_sessions.txt and kg.txt")
    ex.add_argument("--out", required=True, help="folder to write")
    ex.add_argument("--co-window", type=int, default=defaults.co_window)
    ex.add_argument("--seed", type=int, default=0)
    ex.set_defaults(linkpred_func=_export_command)


def _evaluate_command(args: argparse.Namespace) -> None:
    import torch

    from model.linkpred import evaluate_model, format_results, load_checkpoint
    from model.linkpred_data import read_gatne

    torch.set_num_threads(args.threads)
    data = read_gatne(args.data) if args.data else None
    model, cfg, data = load_checkpoint(args.checkpoint, data)
    res = evaluate_model(model, cfg, data)
    print(format_results(res))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))


def _predict_command(args: argparse.Namespace) -> None:
    import torch

    from model.facts import write_facts
    from model.linkpred import load_checkpoint, predict_facts

    torch.set_num_threads(args.threads)
    model, _, data = load_checkpoint(args.checkpoint)
    facts = predict_facts(model, data, args.threshold, args.top_k, args.relation, args.label, args.prefix)
    write_facts(args.out, facts)
    print(f"{len(facts)} facts -> {args.out}")


def _export_command(args: argparse.Namespace) -> None:
    from model.linkpred_data import build_item_graph, write_gatne

    data = build_item_graph(args.data, co_window=args.co_window, seed=args.seed)
    write_gatne(data, args.out)
    print(json.dumps(data.summary()))


def _train_command(args: argparse.Namespace) -> None:
    from model.linkpred import train

    train(LinkPredConfig(**{f.name: getattr(args, f.name) for f in fields(LinkPredConfig)}))


def _baseline_command(args: argparse.Namespace) -> None:
    from model.linkpred_data import heuristic_scores, load_data
    from model.metrics import link_prediction_metrics

    data = load_data(LinkPredConfig(data=args.data))
    types = np.array(data.relations, dtype=object)[data.test[:, 0]].astype(str)
    res = link_prediction_metrics(types, data.test_labels, heuristic_scores(data, data.test, args.kind))
    print(json.dumps(res, indent=2))
