"""The `sparsekern` command line: prune, report, export, demo, selftest.

User mistakes (bad arguments, missing data, a broken run directory) print one
line on stderr and exit with code 2; set SPARSEKERN_DEBUG=1 for the traceback.
"""
from __future__ import annotations

import os
import sys

from sparsekern.cli import common

COMMANDS = {
    "prune": "train a model densely or with a pruning method into a run directory",
    "report": "print a run's per-layer sparsity table and plot its budget and curves",
    "export": "write a run's finalized model (state_dict, safetensors, onnx or CSR sparse)",
    "demo": "dense vs STR (90 percent sparse) LeNet-300-100 on digits, in a few CPU minutes",
    "selftest": "check every available kernel backend against the reference",
}


def _module(command: str):
    # Imported lazily so `sparsekern report` does not pay for the trainer and so on.
    import importlib
    return importlib.import_module(f"sparsekern.cli.{command}")


def build_parser() -> common.Parser:
    parser = common.Parser(prog="sparsekern",
                           description="Learnable network sparsification (STR, L0, L0-HC, Dep-L0, GMP).")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=common.Parser)
    for command, help_text in COMMANDS.items():
        p = sub.add_parser(command, help=help_text, description=help_text)
        if command == "selftest":
            p.add_argument("rest", nargs="*", help="arguments passed to sparsekern.cli.selftest")
        else:
            _module(command).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv[:1] == ["selftest"]:  # selftest owns its own arguments
            from sparsekern.cli import selftest
            return selftest.main(argv[1:])
        args = build_parser().parse_args(argv)
        return _module(args.command).run(args)
    except SystemExit as e:  # argparse: --help (0) or a one-line usage error (2)
        return e.code if isinstance(e.code, int) else 2
    except KeyboardInterrupt:
        print("sparsekern: interrupted", file=sys.stderr)
        return 130
    except (common.CLIError, ValueError, TypeError, OverflowError, OSError) as e:
        # OSError: the file system refused (read-only, full, no permission, missing): the user's to fix.
        if os.environ.get("SPARSEKERN_DEBUG"):
            raise
        print(f"sparsekern: error: {common.one_line(e)}", file=sys.stderr)
        return 2
