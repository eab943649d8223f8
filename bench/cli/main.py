"""`python -m bench`: the subcommands, their exit status, and the one place errors become exit codes."""

from __future__ import annotations

import sys

from bench.cli import EXIT_USAGE
from bench.cli.baseline import cmd_baseline
from bench.cli.calibrate import cmd_calibrate
from bench.cli.compare import cmd_compare
from bench.cli.options import parse_args
from bench.cli.run import cmd_gate, cmd_run
from bench.core.interrupt import INTERRUPTED_RECORD, Interrupted
from cosmos3.errors import InputError


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        commands = {"run": cmd_run, "gate": cmd_gate, "baseline": cmd_baseline, "calibrate": cmd_calibrate,
                    "compare": cmd_compare}
        return commands[args.command](args)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Interrupted as stop:
        print(f"error: {stop}; the benchmark child was stopped and the run left only {INTERRUPTED_RECORD}",
              file=sys.stderr)
        return 128 + stop.signum
