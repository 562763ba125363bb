"""demo-model: build the tiny offline Qwen3 (random weights, local tokenizer, our template)."""

from __future__ import annotations

HELP = "Build the tiny offline demo Qwen3 model (random weights) for tests and demo mode."


def add_arguments(p) -> None:
    p.add_argument("--out", help="Folder to build into (must be empty or new). "
                                 "Without it, the shared cached copy is built or reused.")
    p.add_argument("--json", action="store_true", help="Print the result as JSON.")


def run(args) -> int:
    from core.cli import print_json
    from core.demo import build_demo_model, ensure_demo_model, recipe_hash

    try:
        path = build_demo_model(args.out) if args.out else ensure_demo_model()
    except FileExistsError as exc:
        print(f"error: {exc}")
        return 2
    if args.json:
        print_json({"path": str(path), "recipe": recipe_hash()})
    else:
        print(f"demo model ready: {path}")
    return 0
