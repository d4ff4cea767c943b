"""``igrec export``: checkpoint -> verified ONNX artefact folder; ``igrec parity``: re-check a published
artefact on the provider that serves it. torch is imported only when they run.

``add_subcommands(subparsers)`` registers the command on the ``igrec`` console script's sub-parsers;
``python -m export.cli export ...`` runs it directly.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from export.artefact import INT8_MAX_SCORE_DIFF, INT8_MIN_IDENTICAL, MAX_SCORE_DIFF, MIN_IDENTICAL, MIN_SAME_SET


def _run_export(args: argparse.Namespace) -> None:
    from export.exporter import ExportOptions, build_artefact
    from export.parity import ParityError

    opts = ExportOptions(checkpoint=args.checkpoint, out=args.out, k=args.k, opset=args.opset,
                         parity_cases=args.parity_cases or None, data=args.data, raw_format=args.raw_format,
                         batch_size=args.batch_size, exporter=args.exporter, threads=args.threads,
                         force=args.force, history_trained=args.history_trained)
    try:
        out, report = build_artefact(opts)
    except ParityError as exc:
        print(f"igrec export: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc
    print(report.summary())
    print(f"artefact: {out}")


def _run_parity(args: argparse.Namespace) -> None:
    import json

    from export.artefact import ArtefactError
    from export.exporter import VerifyOptions, verify_artefact

    try:
        report = verify_artefact(VerifyOptions(
            artefact=args.artefact, checkpoint=args.checkpoint, providers=args.provider, fp16=args.fp16,
            int8=args.int8, cases=args.cases or None, data=args.data, raw_format=args.raw_format,
            batch_size=args.batch_size, threads=args.threads, min_identical=args.min_identical,
            max_diff=args.max_diff, min_same_set=args.min_same_set))
    except (ArtefactError, OSError, ValueError, RuntimeError) as exc:
        print(f"igrec parity: {exc}", file=sys.stderr)
        raise SystemExit(1) from exc
    print(report.summary())
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report.to_dict(), f, indent=2)
    if not report.passed:
        raise SystemExit(2)


def add_parity_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("artefact", help="an artefact folder written by igrec export")
    p.add_argument("--checkpoint", help="the checkpoint it was exported from (default: the path in its card; "
                                        "its sha256 must match the card's)")
    p.add_argument("--provider", default="auto",
                   help="execution provider to score with: auto, cpu, cuda or tensorrt (default: auto, the "
                        "worker's choice: TensorRT or CUDA where a GPU is usable, else CPU)")
    precision = p.add_mutually_exclusive_group()
    precision.add_argument("--fp16", action="store_true", help="score the item product in float16 (GPU providers)")
    precision.add_argument("--int8", action="store_true",
                           help="score the item product in int8 on the CPU, its top candidates again in float32 "
                                "(the worker's --int8), held to the int8 bars below")
    p.add_argument("--cases", type=int, default=5000, help="test cases to compare (0 = the whole test split)")
    p.add_argument("--data", help="split folder (or raw log with --raw-format); default: the card's dataset")
    p.add_argument("--raw-format", choices=["diginetica", "yoochoose", "csv"])
    p.add_argument("--batch-size", type=int, default=256, help="sessions per scoring call")
    p.add_argument("--threads", type=int, help="CPU threads for torch and onnxruntime")
    p.add_argument("--min-identical", type=float,
                   help=f"fraction of top-K lists that must be identical (default: the export's bar, "
                        f"{MIN_IDENTICAL}; with --int8 {INT8_MIN_IDENTICAL})")
    p.add_argument("--min-same-set", type=float, default=MIN_SAME_SET,
                   help=f"fraction of top-K item sets (order aside) that must be identical (default {MIN_SAME_SET})")
    p.add_argument("--max-diff", type=float,
                   help=f"largest allowed |score difference| (default: the export's bar, {MAX_SCORE_DIFF:g}; with "
                        f"--int8 {INT8_MAX_SCORE_DIFF:g}; fp16 needs a looser one)")
    p.add_argument("--json", help="also write the report here")


def add_export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="best.pt / checkpoint.pt of a training run")
    p.add_argument("--out", required=True, help="artefact folder to create (e.g. artifacts/diginetica)")
    p.add_argument("--k", type=int, default=20, help="top-K computed inside the graph")
    p.add_argument("--opset", type=int, default=18, help="ai.onnx opset")
    p.add_argument("--parity-cases", type=int, default=5000,
                   help="test cases for the parity check (0 = the whole test split)")
    p.add_argument("--data", help="split folder (or raw log with --raw-format) for parity and the vocabulary; "
                                  "default: the checkpoint's training data")
    p.add_argument("--raw-format", choices=["diginetica", "yoochoose", "csv"])
    p.add_argument("--batch-size", type=int, default=256, help="parity batch size")
    p.add_argument("--exporter", choices=["torchscript", "dynamo"], default="torchscript",
                   help="torch.onnx path (dynamo needs the onnxscript package)")
    p.add_argument("--threads", type=int, help="CPU threads for torch and onnxruntime during the parity check")
    p.add_argument("--force", action="store_true", help="replace an existing --out folder")
    p.add_argument("--history-trained", action=argparse.BooleanOptionalAction, default=None,
                   help="whether the network was trained with user histories, so the Scorer feeds them "
                        "(default: the checkpoint's train config 'history_inputs', else no)")


def add_subcommands(subparsers) -> None:
    """Add ``export`` and ``parity`` to ``subparsers`` (from ``parser.add_subparsers()``); each sets ``func``,
    run ``args.func(args)``."""
    p = subparsers.add_parser("export", help="checkpoint -> ONNX artefact (top-K inside), parity-checked")
    add_export_arguments(p)
    p.set_defaults(func=_run_export)
    p = subparsers.add_parser(
        "parity", help="check a published artefact against its checkpoint on a chosen provider (e.g. CUDA)",
        description="Score test prefixes with the artefact on the chosen onnxruntime provider and with the "
                    "checkpoint in PyTorch (CPU, float32) and compare the top-K lists and scores, with the "
                    "export's bar. Run it on the serving machine: the export checks the CPU provider only. "
                    "Exit status 2 when the bar is missed.")
    add_parity_arguments(p)
    p.set_defaults(func=_run_parity)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="igrec", description="igrec export commands")
    add_subcommands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
