"""``igrec``: one console script, one subcommand per job.

Subcommands that train or export import torch lazily; the stream side never needs it.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from streams.settings import Settings, SettingsError

DESCRIPTION = """\
igrec: real-time next-item recommendations from a Kafka click stream.

events (Kafka) -> per-user session graphs -> multi-interest GGNN scorer (ONNX) -> top-K recommendations,
enriched events and knowledge triples (Kafka) -> Neo4j.

Settings come from IGREC_* environment variables or a TOML file (--config / IGREC_CONFIG);
see README.md, "Configuration".
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="igrec", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", help="TOML settings file (flat keys named like the IGREC_* variables)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    stack = commands.add_parser(
        "stack",
        help="the local Kafka (KRaft) + Neo4j stack on 127.0.0.1",
        description="Resolve Kafka and Neo4j from Maven Central, start them on 127.0.0.1 with all data under "
        "the state folder (IGREC_STATE_DIR), wait until healthy, report, stop.",
    )
    stack.add_argument("action", choices=["up", "down", "status", "fetch"], help="what to do")
    stack.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for health (up) or stop")
    stack.set_defaults(func=_stack)

    demo = commands.add_parser(
        "demo",
        help="start the stack and run a real round trip: dataset sessions -> Kafka -> Neo4j",
        description="Starts the local stack, publishes real test sessions of a dataset split as click events to "
        "Kafka, consumes them back, writes users, sessions and clicks to Neo4j, and prints what it wrote.",
    )
    demo.add_argument("--dataset", default=None, help="split folder (default: ../shared/data/diginetica/srgnn_split)")
    demo.add_argument("--sessions", type=int, default=200, help="how many test sessions to publish")
    demo.set_defaults(func=_demo)
    return parser


def _stack(args: argparse.Namespace, settings: Settings) -> int:
    from deploy import stack

    if args.action == "fetch":
        stack.fetch(settings)
    elif args.action == "up":
        stack.up(settings, timeout=args.timeout)
        print(
            f"stack ready: Kafka {settings.bootstrap_servers}, Neo4j {settings.neo4j_url} "
            f"(user {settings.neo4j_user}, password in {settings.neo4j_password_file})"
        )
    elif args.action == "down":
        stack.down(settings, timeout=args.timeout)
    else:
        report = stack.status(settings)
        print(json.dumps(report, indent=2))
        return 0 if all(entry["healthy"] for entry in report.values()) else 1
    return 0


def _demo(args: argparse.Namespace, settings: Settings) -> int:
    from streams.demo import run_demo

    return run_demo(settings, dataset=args.dataset, n_sessions=args.sessions)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.load(args.config)
        return args.func(args, settings)
    except SettingsError as error:
        print(f"igrec: configuration error: {error}", file=sys.stderr)
        return 2
    except Exception as error:
        from deploy.stack import StackError

        if isinstance(error, StackError):
            print(f"igrec: {error}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
