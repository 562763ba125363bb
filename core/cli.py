"""The command registry behind `python -m core`.

Each command lives in ``core/commands/<name>.py`` with ``HELP``, ``add_arguments(parser)`` and
``run(args) -> int``. Command modules import heavy libraries inside ``run`` only, so ``--help`` and
argument errors answer at once.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys

# name -> module under core.commands. Order is the order shown by --help.
COMMANDS = {
    "demo-model": "demo_model",
    "hw": "hw",
    "estimate": "estimate",
    "models": "models",
    "mix": "mix",
    "train": "train",
    "export": "export",
    "chat": "chat",
    "eval": "eval",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m core",
        description="QwenTune: LoRA / QLoRA fine-tuning of Qwen3, from the command line.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        # Commands land one issue at a time; one whose module is not written yet is left out.
        if importlib.util.find_spec(f"core.commands.{module_name}") is None:
            continue
        module = importlib.import_module(f"core.commands.{module_name}")
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def print_json(data) -> None:
    """Commands with --json print exactly one JSON document on stdout."""
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


def main(argv: list[str] | None = None) -> int:
    from core import procs

    procs.start_record()  # a job started by core.procs.spawn_core: say it is alive
    code, error = 1, ""
    try:
        code, error = _main(argv)
    except SystemExit as exc:  # argparse's own exit (bad flags, --help)
        code = exc.code if isinstance(exc.code, int) else 2
        raise
    finally:
        procs.finish_record(code, error)
    return code


def _main(argv: list[str] | None) -> tuple[int, str]:
    from core.errors import QwenTuneError

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2, ""
    try:
        return int(args._module.run(args) or 0), ""
    except QwenTuneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2, str(exc)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130, "interrupted"
