"""eval: base vs fine-tuned on the run's held-out data; results saved in the run folder."""

from __future__ import annotations

from core.fmt import number

HELP = ("Evaluate a run, base vs fine-tuned: held-out loss / perplexity, thinking-mode control, answer "
        "accuracy. Saves <run>/eval.json.")


def add_arguments(p) -> None:
    from core.config import ChatConfig, EvalConfig
    from core.settings import add_cli_flags

    p.add_argument("--run", required=True, metavar="DIR", help="A run folder, or a checkpoint folder of a run.")
    p.add_argument("--json", action="store_true", help="Print the results as one JSON document.")
    p.add_argument("--limit", type=int, default=None, metavar="N",
                   help="At most N rows / prompts for each measurement (a quick check).")
    p.add_argument("--mix", default=None, metavar="DIR", help="Evaluate on this saved mix instead of the run's.")
    p.add_argument("--runs-dir", default="runs", help="Folder of run folders (for the GPU check).")
    p.add_argument("--no-save", action="store_true", help="Do not write eval.json.")
    p.add_argument("--force", action="store_true",
                   help="Start even while a training run holds the GPU and the estimator says both may not fit "
                        "(the training may then crash out of memory).")
    p.add_argument("--serving", action="store_true",
                   help="Only print how to serve the run (vllm serve command + OpenAI client snippet).")
    add_cli_flags(p, EvalConfig)
    add_cli_flags(p, ChatConfig)


def _configs(args):
    from core.config import ChatConfig, EvalConfig
    from core.settings import split_overrides

    return split_overrides(args, EvalConfig, ChatConfig)


def print_table(result: dict) -> None:
    from core.eval.evaluate import results_table

    rows = results_table(result)
    width = max([len(r["label"]) for r in rows] + [6])
    print(f"{'metric':<{width}}  {'base':>10}  {'fine-tuned':>10}  {'change':>10}")
    for r in rows:
        mark = {True: " better", False: " worse", None: ""}[r["better"]]
        cells = "  ".join(f"{number(r[k]):>10}" for k in ("base", "tuned", "change"))
        print(f"{r['label']:<{width}}  {cells}{mark}")
    acc = result.get("accuracy") or {}
    if acc.get("note"):
        print(f"accuracy: {acc['note']}")
    for pane in ("base", "tuned"):
        n = (acc.get(pane) or {}).get("ran_out_while_reasoning")
        if n:
            print(f"note: {n} {pane} replies ran out of tokens while reasoning (raise --answer-max-new-tokens)")
    es = result.get("evalscope") or {}
    if es.get("skipped"):
        print(f"evalscope: {es['skipped']}")
    if es.get("error"):
        print(f"evalscope: {es['error']}")
    if result.get("saved_to"):
        print(f"saved: {result['saved_to']}")


def run(args) -> int:
    import sys

    from core.cli import print_json

    if args.serving:
        from core.eval.evaluate import run_dir_of
        from core.eval.serving import serving_for_run

        items = serving_for_run(run_dir_of(args.run))
        if args.json:
            print_json(items)
            return 0
        if not items:
            print("nothing to serve yet: the run has no adapter or export")
            return 1
        for item in items:
            print(f"# {item['kind']}: {item['path']}\n{item['command']}\n")
        print("# then, from Python:\n" + items[0]["snippet"])
        return 0

    from core.commands.chat import gpu_check
    from core.eval.evaluate import evaluate

    eval_cfg, chat_cfg = _configs(args)
    refused = gpu_check("eval", args.run, chat_cfg, args.runs_dir, args.force)
    if refused is not None:
        return refused
    last = {"stage": None}

    def progress(stage: str, done: int, total: int) -> None:
        if stage != last["stage"] or done == total:
            print(f"[{stage}] {done}/{total}", file=sys.stderr, flush=True)
            last["stage"] = stage

    result = evaluate(args.run, eval_cfg, chat_cfg, limit=args.limit, mix_dir=args.mix, progress=progress,
                      save=not args.no_save, runs_dir=args.runs_dir, gpu_check=False)
    if args.json:
        print_json(result)
    else:
        print_table(result)
    return 0
