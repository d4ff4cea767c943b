"""Subcommands ``train``, ``evaluate``, ``search``, ``items`` and ``linkpred`` for the ``igrec`` console script.

``add_subcommands(subparsers)`` registers them on an existing argparse sub-parser set (streams/cli.py);
``python -m model.cli train ...`` runs them directly. torch is imported only when a command runs.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def _run_train(args: argparse.Namespace) -> None:
    from model.train import config_from_args, train

    train(config_from_args(args))


def _run_evaluate(args: argparse.Namespace) -> None:
    from model.evaluate import evaluate

    evaluate(args)


def _run_search(args: argparse.Namespace) -> None:
    from model.search import search

    search(args)


def _run_linkpred(args: argparse.Namespace) -> None:
    args.linkpred_func(args)


def add_subcommands(subparsers) -> None:
    """Add ``train``, ``evaluate``, ``search``, ``items`` and ``linkpred`` to ``subparsers``.

    Each sub-parser sets ``func``; the caller runs ``args.func(args)``.
    """
    from model.evaluate import add_evaluate_arguments
    from model.items_cli import add_items_subcommand
    from model.linkpred_cli import add_linkpred_arguments
    from model.search import add_search_arguments
    from model.train import add_train_arguments

    p = subparsers.add_parser("train", help="train a next-item model on a session split")
    add_train_arguments(p)
    p.set_defaults(func=_run_train)
    p = subparsers.add_parser("evaluate", help="HR/MRR/NDCG@10,20 of a checkpoint or baseline")
    add_evaluate_arguments(p)
    p.set_defaults(func=_run_evaluate)
    p = subparsers.add_parser("search", help="hyper-parameter grid search (prints a results table)")
    add_search_arguments(p)
    p.set_defaults(func=_run_search)
    add_items_subcommand(subparsers)
    p = subparsers.add_parser("linkpred", help="link prediction on multiplex graphs (train / evaluate / predict)",
                              description="Relation prediction with the GATNE protocol (ROC-AUC, PR-AUC, F1, "
                              "filtered MRR); predicted links as RELATED facts.")
    add_linkpred_arguments(p)
    p.set_defaults(func=_run_linkpred)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="igrec", description="igrec offline model commands")
    add_subcommands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
