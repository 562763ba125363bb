"""hw: the GPUs here (or a simulated card) and which Qwen3 model x method fits each."""

from __future__ import annotations

import sys

HELP = "Show GPUs, RAM and disk, and which Qwen3 model and method fit each GPU."


def add_arguments(p) -> None:
    p.add_argument("--vram-gb", "--gpu-memory", dest="vram_gb", type=float, default=None,
                   help="Plan for cards you do not have: each with this much memory (GiB as nvidia-smi shows "
                        "it, e.g. 12, 24, 80) instead of detecting GPUs.")
    p.add_argument("--gpus", type=int, default=None,
                   help="Train on this many cards together (ddp or fsdp): with --vram-gb, that many such cards "
                        "(default 1); else the first that many detected GPUs (default: all of them). With 2 or "
                        "more the per-card plan for ddp and fsdp is shown too.")
    p.add_argument("--seq-len", type=int, default=2048, help="Sequence length to judge at (tokens).")
    p.add_argument("--rank", type=int, default=16, help="LoRA rank to judge at.")
    p.add_argument("--backend", default="unsloth", choices=["unsloth", "peft"],
                   help="Training backend to judge for (unsloth is the GPU default).")
    from core.commands.estimate import _info, add_rl_flags

    stage = _info("train.stage")
    p.add_argument("--stage", default=stage.default, choices=list(stage.choices),
                   help="Judge this training stage: " + stage.help + " For grpo the rows are --prompt-len + "
                        "--completion-len tokens (not --seq-len), and 'max seq' is the longest prompt + "
                        "completion that fits.")
    add_rl_flags(p)
    p.add_argument("--json", action="store_true", help="Print one JSON document.")


def run(args) -> int:
    from core.cli import print_json
    from core.hardware.detect import detect, simulated
    from core.hardware.recommend import recommend

    if args.vram_gb is not None and args.vram_gb <= 0:
        print("error: --vram-gb must be a positive number", file=sys.stderr)
        return 2
    if args.seq_len < 16 or (args.gpus is not None and args.gpus < 1) or args.rank < 1:
        print("error: --seq-len must be >= 16, --gpus and --rank >= 1", file=sys.stderr)
        return 2
    report = simulated(args.vram_gb, count=args.gpus or 1) if args.vram_gb else detect()
    if args.gpus is not None and not args.vram_gb and report.gpus and args.gpus > len(report.gpus):
        print(f"error: --gpus {args.gpus}, but {len(report.gpus)} GPU(s) are detected; to plan for cards you "
              f"do not have add --gpu-memory GB (e.g. --gpus {args.gpus} --gpu-memory 48)", file=sys.stderr)
        return 2
    if min(args.prompt_len, args.completion_len) < 8 or args.num_generations < 2 or args.kl_beta < 0:
        print("error: --prompt-len and --completion-len must be >= 8, --num-generations >= 2, --kl-beta >= 0",
              file=sys.stderr)
        return 2
    rl = {"max_prompt_len": args.prompt_len, "max_completion_len": args.completion_len,
          "num_generations": args.num_generations, "kl_beta": args.kl_beta}
    result = recommend(report, seq_len=args.seq_len, rank=args.rank, backend=args.backend,
                       grad_ckpt="unsloth" if args.backend == "unsloth" else "on", gpus=args.gpus,
                       stage=args.stage, rl=rl)
    if args.json:
        print_json(result)
        return 0
    print(format_text(result))
    return 0


def format_text(result: dict) -> str:
    lines = []
    sysinfo = result["system"]
    if not result["gpus"]:
        lines.append(result["message"])
        lines.append("To see what a card could train, simulate it: python -m core hw --vram-gb 24")
    for g in result["gpus"]:
        extra = []
        if g["compute_capability"]:
            extra.append(f"cc {g['compute_capability']}")
        extra.append("bf16" if g["bf16"] else "no bf16 (fp16)")
        if g["utilization_pct"] is not None:
            extra.append(f"{g['utilization_pct']}% busy")
        if g["temperature_c"] is not None:
            extra.append(f"{g['temperature_c']} C")
        if g["power_w"] is not None:
            extra.append(f"{g['power_w']:.0f} W")
        lines.append(f"GPU {g['index']}: {g['name']}  {g['used_gib']:.1f} / {g['total_gib']:.1f} GiB used  "
                     f"({', '.join(extra)})")
    if sysinfo["driver_version"]:
        lines.append(f"driver {sysinfo['driver_version']}, CUDA {sysinfo['cuda_version'] or '?'}")
    ram = f"{sysinfo['ram_available_gib']:.1f} / {sysinfo['ram_total_gib']:.1f} GiB free" \
        if sysinfo["ram_total_gib"] else "unknown"
    disk = f"{sysinfo['disk_free_gib']:.0f} GiB free" if sysinfo["disk_free_gib"] is not None else "unknown"
    lines.append(f"RAM {ram}; disk {disk}")
    if result["message"] and result["gpus"]:
        lines.append(result["message"])
    at = judged_at(result)
    for g in result["gpus"]:
        rows = [r for r in result["recommendations"] if r["gpu"] == g["index"]]
        lines.append("")
        lines.append(f"GPU {g['index']} ({g['name']}, {g['total_gib']:.0f} GiB) {at}:")
        lines.append(f"  {'model':<24}{'method':<8}{'est GiB':>9}  {'verdict':<7}{'max seq':>9}{'batch':>7}")
        for r in rows:
            mark = "  <- best pick" if r["best"] else ""
            lines.append(f"  {r['display']:<24}{r['method']:<8}{r['est_gib']:>9.1f}  {r['verdict']:<7}"
                         f"{r['max_seq_len']:>9}{r['micro_batch']:>7}{mark}")
    best = result["best"]
    if best:
        lines.append("")
        lines.append(f"Best pick: {best['display']} with {best['method']} on GPU {best['gpu']} "
                     f"(~{best['est_gib']:.1f} GiB at {best['seq_len']} tokens, micro-batch {best['micro_batch']}, "
                     f"up to {best['max_seq_len']} tokens at batch 1)")
    elif result["gpus"]:
        lines.append("")
        lines.append("No model fits with 10% headroom; try a shorter --seq-len.")
    multi = result.get("multi")
    if multi:
        lines += [""] + multi_text(multi, at)
    return "\n".join(lines)


def judged_at(result: dict) -> str:
    """What the tables judge: "at 2048 tokens", or the stage and its rows."""
    stage, rl = result.get("stage", "sft"), result.get("rl") or {}
    if stage == "grpo":
        return (f"for grpo (prompts of {rl['max_prompt_len']} + completions of {rl['max_completion_len']} tokens, "
                f"{rl['num_generations']} per prompt{', KL reference' if rl['kl_beta'] else ''})")
    if stage in ("dpo", "orpo"):
        return f"for {stage} (chosen + rejected sequences of {result['seq_len']} tokens)"
    return f"at {result['seq_len']} tokens"


def multi_text(multi: dict, at: str) -> list[str]:
    """The several-card table: GiB per card with ddp and with fsdp, and the strategy to use."""
    ids = ",".join(str(i) for i in multi["ids"])
    lines = [f"{multi['gpus']} GPUs together (GPU {ids}, {multi['vram_gib']:.0f} GiB each) {at}, GiB per card:",
             f"  {'model':<24}{'method':<8}{'ddp':>8}{'fsdp':>8}  {'use':<6}{'verdict':<8}{'max seq':>8}"
             f"{'batch':>7}"]
    for r in multi["recommendations"]:
        mark = "  <- best pick" if r["best"] else ""
        lines.append(f"  {r['display']:<24}{r['method']:<8}{r['ddp_gib']:>8.1f}{r['fsdp_gib']:>8.1f}  "
                     f"{r['strategy']:<6}{r['verdict']:<8}{r['max_seq_len']:>8}{r['micro_batch']:>7}{mark}")
    lines.append("")
    lines.append(f"With {multi['gpus']} GPUs: {multi['sentence']}.")
    best = multi["best"]
    if best:
        lines.append(f"  train.strategy: {best['strategy']}, train.gpus: {multi['gpus']}; micro-batch auto: "
                     f"{best['micro_batch']} per card, effective batch {best['effective_batch']} rows over the "
                     f"{multi['gpus']} cards")
    return lines
