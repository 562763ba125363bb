"""mix: build a data mix folder from a mix config (sources, ratios, seed, length policy)."""

from __future__ import annotations

import sys

HELP = "Mix data sources by ratio, render them in the chat template, report token lengths, save a mix folder."


def add_arguments(p) -> None:
    from core.config import MixConfig
    from core.settings import add_cli_flags

    p.add_argument("config", help="Mix config YAML (see presets/mixes/), or one data file or folder "
                                  "(.jsonl, .json, .csv, .parquet) to mix alone.")
    p.add_argument("--out", help="Folder to save the mix in (required unless --dry-run).")
    p.add_argument("--json", action="store_true", help="Print counts per source, drops and total as JSON.")
    p.add_argument("--preview", type=int, default=0, metavar="N",
                   help="Print N rendered rows with the trained tokens marked.")
    p.add_argument("--dry-run", action="store_true", help="Report only; write nothing.")
    p.add_argument("--force", action="store_true", help="Replace an existing mix folder at --out.")
    add_cli_flags(p, MixConfig)


# How a row's token length is counted, per kind of mix.
KIND_LENGTH = {"sft": "conversations; tokens = the whole conversation",
               "preference": "preference pairs; tokens = prompt + the longer reply",
               "prompt": "prompts with a reference answer; tokens = the prompt"}


def _progress(fraction: float, message: str) -> None:
    print(f"[{fraction:4.0%}] {message}", file=sys.stderr, flush=True)


def _table(result) -> str:
    head = ["source", "formats", "read", "parsed", "usable", "used", "dropped", "p50", "p95", "max",
            f">{result.config.max_seq_len}"]
    lines = [head]
    for s in result.sources:
        ls = s.length_stats
        lines.append([s.name, ",".join(s.formats) or "-", s.rows_read, s.parsed, s.usable,
                      f"{s.used}" + (f" ({s.repeated} rep)" if s.repeated else ""), s.dropped,
                      ls.get("p50", 0), ls.get("p95", 0), ls.get("max", 0), ls.get("over_max", 0)])
    widths = [max(len(str(row[i])) for row in lines) for i in range(len(head))]
    return "\n".join("  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip() for row in lines)


def data_source(path: str) -> bool:
    """Whether ``path`` is a data file or folder to mix alone rather than a mix config: a folder, a
    .jsonl / .csv / .parquet file, or a .json file that is not a mix config (no top-level "sources")."""
    import json
    from pathlib import Path

    from core.data.sources import FILE_TYPES

    p = Path(path)
    if p.is_dir():
        return True
    suffix = p.suffix.lower()
    if suffix not in FILE_TYPES:
        return False
    if suffix != ".json":
        return True
    try:
        if p.stat().st_size > 1 << 20:  # a mix config is a few lines; a large .json is data
            return True
        return not (isinstance(obj := json.loads(p.read_text(encoding="utf-8")), dict) and "sources" in obj)
    except (OSError, ValueError):
        return True  # let the data reader name the problem with its line


def run(args) -> int:
    from core.cli import print_json
    from core.config import MixConfig
    from core.data.mix import build_mix, load_tokenizer
    from core.data.preview import preference_text, preview_text, prompt_text
    from core.data.render import MaskOptions, count_tokens, render, render_preference, render_prompt
    from core.data.report import problems_text
    from core.data.tokenizer import describe
    from core.settings import ConfigError, cli_overrides, deep_merge, from_dict, read_yaml

    if not args.out and not args.dry_run:
        raise ConfigError("give --out DIR (where to save the mix) or --dry-run", "--out")
    if data_source(args.config):
        data, lines = {"sources": [{"path": args.config}]}, None
    else:
        data, lines = read_yaml(args.config)
    if data is not None and not isinstance(data, dict):
        raise ConfigError("expected a mapping of mix settings", "", args.config)
    data = deep_merge(data or {}, cli_overrides(args))
    cfg = from_dict(MixConfig, data, source=args.config, lines=lines)
    tokenizer = load_tokenizer(cfg.tokenizer)  # --tokenizer overrides the YAML's, which defaults to qwen3
    progress = None if args.json else _progress
    result = build_mix(cfg, tokenizer, None if args.dry_run else args.out, progress, overwrite=args.force)
    if args.json:
        print_json(result.summary())
    else:
        print(_table(result))
        where = f" -> {result.out_dir}" if result.out_dir else " (dry run, nothing written)"
        print(f"total: {result.total} rows (train {len(result.rows)}, eval {len(result.eval_rows)}){where}")
        print(f"kind: {result.kind} ({KIND_LENGTH[result.kind]})")
        print(f"tokens counted with {describe(result.tokenizer)}")
        report = problems_text(result)
        if report:
            print(report)
        for w in result.warnings:
            print(f"warning: {w}")
    if args.preview:
        color = sys.stdout.isatty()
        truncate = cfg.overlong == "truncate"
        out = sys.stderr if args.json else sys.stdout
        for i, conv in enumerate(result.train[: args.preview]):
            head = f"\n--- preview {i + 1}: {conv.source} ({conv.origin})"
            if conv.kind == "preference":
                pair = render_preference(conv, tokenizer)
                p, c, r = count_tokens([pair.prompt, pair.chosen, pair.rejected], tokenizer)
                print(f"{head}, prompt {p} tokens, chosen {c}, rejected {r} ---", file=out)
                print(preference_text(pair, color=color), file=out)
                continue
            if conv.kind == "prompt":
                prompt = render_prompt(conv, tokenizer)
                print(f"{head}, prompt {count_tokens([prompt], tokenizer)[0]} tokens ---", file=out)
                print(prompt_text(prompt, str(conv.meta.get("expected_answer", "")), color=color), file=out)
                continue
            rendered = render(conv, tokenizer, max_len=cfg.max_seq_len, truncate=truncate, options=MaskOptions())
            print(f"{head}, {rendered.n_tokens} tokens, "
                  f"{rendered.n_trained} trained {'(green)' if color else 'between ⟦ ⟧'} ---", file=out)
            print(preview_text(rendered, color=color), file=out)
    return 0
