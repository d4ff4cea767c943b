"""``igrec export``: checkpoint -> verified ONNX artefact folder. torch is imported only when it runs.

``add_subcommands(subparsers)`` registers the command on the ``igrec`` console script's sub-parsers;
``python -m export.cli export ...`` runs it directly.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


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
    """Add ``export`` to ``subparsers`` (from ``parser.add_subparsers()``); it sets ``func``, run
    ``args.func(args)``."""
    p = subparsers.add_parser("export", help="checkpoint -> ONNX artefact (top-K inside), parity-checked")
    add_export_arguments(p)
    p.set_defaults(func=_run_export)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="igrec", description="igrec export commands")
    add_subcommands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
