"""export: a run's adapter (PEFT), merged 16-bit or 4-bit model, or GGUF."""

from __future__ import annotations

HELP = "Export a run: the LoRA adapter, a merged 16-bit / 4-bit model, or GGUF for llama.cpp."


def add_arguments(p) -> None:
    from core.settings import add_cli_flags
    from core.train.export import ExportConfig

    add_cli_flags(p, ExportConfig)  # --run, --format, --out, --checkpoint, --gguf-quant, --overwrite
    p.add_argument("--json", action="store_true", help="Print the result as JSON.")


def run(args) -> int:
    import sys

    from core.cli import print_json
    from core.settings import cli_overrides, from_dict
    from core.train.export import ExportConfig, ExportError, export_run

    cfg = from_dict(ExportConfig, cli_overrides(args))
    try:
        out = export_run(cfg, echo=(lambda m: print(m, file=sys.stderr)) if args.json else print)
    except ExportError as exc:
        if args.json:
            print_json({"ok": False, "error": str(exc)})
        else:
            print(f"error: {exc}", file=sys.stderr)
        return 3
    if args.json:
        print_json({"ok": True, "format": cfg.format, "out": str(out)})
    return 0
