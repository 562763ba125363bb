"""chat: ask the base model and the fine-tuned model the same question, print both answers."""

from __future__ import annotations

HELP = "Ask the base and the fine-tuned model the same question (same sampling, same seed); print both."


def add_arguments(p) -> None:
    from core.config import ChatConfig, SamplingConfig
    from core.settings import add_cli_flags

    p.add_argument("--run", required=True, metavar="TARGET",
                   help="A run folder (runs/<name>), a checkpoint folder, an adapter folder, a model folder, "
                        "a catalog key, a hub id, or 'demo'.")
    p.add_argument("--prompt", required=True, help="The question. '-' reads it from stdin.")
    p.add_argument("--system", default="", help="Optional system prompt for both panes.")
    p.add_argument("--runs-dir", default="runs", help="Folder of run folders (to find --run by name).")
    p.add_argument("--json", action="store_true",
                   help='Print {"base": {"reasoning", "answer"}, "tuned": {"reasoning", "answer"}} only.')
    p.add_argument("--force", action="store_true",
                   help="Start even while a training run holds the GPU and the estimator says both may not fit "
                        "(the training may then crash out of memory).")
    # --thinking on|off, --temperature, --top-p, --top-k, --min-p, --greedy, --max-new-tokens, --seed ...
    add_cli_flags(p, SamplingConfig)
    add_cli_flags(p, ChatConfig)


def _configs(args):
    from core.config import ChatConfig, SamplingConfig
    from core.settings import split_overrides

    return split_overrides(args, SamplingConfig, ChatConfig)


def gpu_check(kind: str, target: str, chat_cfg, runs_dir: str, force: bool) -> int | None:
    """The GPU queue for a command that loads ``target``: None to go on, else the exit status
    (the reason is printed). Shared by ``chat`` and ``eval``."""
    import sys

    from core.chat.loader import gpu_work_args, resolve_target
    from core.gpu_queue import EXIT_GPU_BUSY, may_start_gpu_work

    if force:
        return None
    spec = resolve_target(target, chat_cfg, runs_dir=runs_dir)
    decision = may_start_gpu_work(kind, runs_dir=runs_dir, **gpu_work_args(spec, chat_cfg))
    if not decision.allowed:
        print(f"error: {decision.message()}\n(--force starts anyway, at the risk of the training running out "
              "of GPU memory)", file=sys.stderr)
        return EXIT_GPU_BUSY
    if decision.code in ("fits", "too_big"):
        print(f"note: {decision.message()}", file=sys.stderr)
    return None


def run(args) -> int:
    import sys

    from core.chat.loader import load_engine
    from core.chat.sampling import resolve
    from core.cli import print_json

    sampling_cfg, chat_cfg = _configs(args)
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    if not prompt.strip():
        print("error: --prompt is empty", file=sys.stderr)
        return 2
    sampling = resolve(sampling_cfg)
    refused = gpu_check("chat", args.run, chat_cfg, args.runs_dir, args.force)
    if refused is not None:
        return refused
    # Checked just above (or --force): the loader's own check would only repeat it.
    engine = load_engine(args.run, chat_cfg, runs_dir=args.runs_dir, gpu_check=False)
    messages = [{"role": "user", "content": prompt}]
    for note in engine.info.get("notes", []):
        print(f"note: {note}", file=sys.stderr)
    if args.json:
        replies = engine.compare(messages, sampling, system=args.system)
        print_json({pane: (replies[pane].to_json() if pane in replies else None) for pane in ("base", "tuned")})
        return 0
    titles = {"base": f"base model: {engine.info.get('base')}",
              "tuned": f"fine-tuned: {engine.info.get('label')}"}
    mode = "thinking on" if sampling.thinking else "thinking off"
    # Both panes decode together (one batch); the first pane streams live, the others print as soon
    # as they are done, so the terminal never mixes two replies.
    stream = engine.compare_stream({pane: messages for pane in engine.panes}, sampling, system=args.system)
    live = engine.panes[0]
    print(f"=== {titles[live]} ({mode}, seed {sampling.seed}) ===", flush=True)
    printed: set[str] = set()

    def footer(pane: str) -> None:
        reply = stream.generations[pane].reply
        st = reply.stats()
        print(f"\n--- {st['new_tokens']} tokens, {st['tokens_per_s']} tokens/s, {st['finish_reason']}", flush=True)
        if reply.finish_reason == "length" and reply.split.in_reasoning:
            print("--- the reply ran out of tokens while reasoning: raise --max-new-tokens", flush=True)

    for pane, piece in stream:
        if pane == live and piece:
            sys.stdout.write(piece)
            sys.stdout.flush()
        elif not piece and stream.generations[pane].reply is not None and pane not in printed:
            printed.add(pane)
            if pane == live:
                footer(pane)
    for pane in engine.panes[1:]:
        print(f"=== {titles[pane]} ({mode}, seed {sampling.seed}) ===", flush=True)
        sys.stdout.write(stream.generations[pane].reply.text)
        footer(pane)
    if "tuned" not in engine.panes:
        print("(no fine-tuned pane: load a run, checkpoint or adapter to compare)", flush=True)
    return 0
