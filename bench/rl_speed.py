"""Speed of the stages after SFT: GRPO steps/s and peak memory, DPO tokens/s, through the project's trainer.

Run on a GPU machine (one call, all four figures, about 8 minutes on one H200):

    python bench/rl_speed.py --out bench/results

Figures (random-weight models with Qwen3's real shapes, built like bench/train_speed.py's; nothing is
downloaded), each one `python -m core train` on a generated config in its own process (clean GPU
memory, the GUI's code path: worker, stages, callbacks, rollouts):
  * grpo-0.6b   Qwen3-0.6B shape, 16-bit LoRA r=16 on all 7 linears, 2 prompts x --generations
                completions of --completion-len tokens per step (a random model never stops early, so
                every rollout runs the full length: the worst case, and the same work on every card)
  * grpo-4b     the same on the Qwen3-4B shape
  * dpo-8b      Qwen3-8B shape, QLoRA nf4 (quantized on load), micro-batch 2 x accumulation 2 of
                prompt --prompt-len + replies --reply-len tokens (chosen and rejected)
  * grpo-0.6b-peft  grpo-0.6b on the transformers + PEFT backend, where rl.rollout auto decodes with
                the chat engine (on the unsloth backend it picks Unsloth's CUDA-graph decode)
Reported per figure: steps/s and s/step after --warmup optimizer steps, tokens/s (GRPO: prompt +
completion tokens; DPO: prompt + chosen and prompt + rejected), peak GiB (torch's max allocated and
reserved during training, NVML's used), the rollout engine and the backend. One JSON line per figure is
appended to <out>/rl_speed.jsonl with the card's name.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from train_speed import LINEARS, SHAPES, _words, build_model, train_cli  # noqa: E402  (Qwen3's shapes, defined once)

from core.choices import BACKENDS, ROLLOUTS  # noqa: E402

# figure -> (stage, shape, method, backend: None = --backend)
FIGURES = {"grpo-0.6b": ("grpo", "0.6b", "lora", None), "grpo-4b": ("grpo", "4b", "lora", None),
           "dpo-8b": ("dpo", "8b", "qlora", None),
           # the chat engine's rollouts on a GPU: transformers + PEFT, where rl.rollout auto picks them
           "grpo-0.6b-peft": ("grpo", "0.6b", "lora", "peft")}


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def tokenizer_dir(shape: str) -> Path:
    """Qwen3's real tokenizer for Qwen3's shapes (bench/chat_speed.py finds it); the demo model's for
    the tiny shape, whose 1,024-token vocabulary it matches."""
    from core.demo import ensure_demo_model

    if SHAPES[shape]["vocab_size"] <= 1024:
        return ensure_demo_model()
    from chat_speed import qwen3_tokenizer_dir

    return qwen3_tokenizer_dir(None)[0]


def _fit(tok, rng, target: int) -> str:
    """Words that tokenize to about ``target`` tokens (one seeded stream, cut by the token count)."""
    text = _words(rng, target * 2)
    ids = tok(text, add_special_tokens=False)["input_ids"][:target]
    return tok.decode(ids).strip()


def build_mix(kind: str, folder: Path, model_dir: Path, rows: int, prompt_len: int, reply_len: int,
              seed: int = 7) -> Path:
    """A preference mix (prompt + chosen + rejected) or a prompt mix (prompt + reference answer)."""
    from transformers import AutoTokenizer

    from core.data.conversation import Conversation, Message
    from core.data.mixdir import write_mix_dir

    if (folder / "manifest.json").is_file():
        return folder
    tok = AutoTokenizer.from_pretrained(model_dir)
    rng = random.Random(seed)
    out = []
    for i in range(rows):
        question = _fit(tok, rng, prompt_len)
        if kind == "preference":
            conv = Conversation([Message("user", question), Message("assistant", _fit(tok, rng, reply_len))],
                                source="bench", origin=f"bench:{i}",
                                rejected=Message("assistant", _fit(tok, rng, reply_len)))
        else:
            conv = Conversation([Message("user", question)], source="bench", origin=f"bench:{i}",
                                meta={"expected_answer": str(rng.randint(1, 99))})
        out.append({"conversation": conv.to_json(), "text": "", "n_tokens": 0, "source": "bench"})
    write_mix_dir(folder, out, [], {"kind": kind, "sources": [{"name": "bench"}]})
    return folder


def run_figure(args, figure: str) -> dict:

    stage, shape, method, backend = FIGURES[figure]
    shape = args.shape or shape
    backend = backend or args.backend
    work = Path(args.work)
    model_dir = work / f"model-{shape}"
    t0 = time.time()
    build_model(shape, model_dir, tokenizer_dir(shape))
    grpo = stage == "grpo"
    micro_batch = 2 * args.generations if grpo else 2
    accum = 1 if grpo else 2
    prompts_needed = args.steps * (2 if grpo else micro_batch * accum) + 4
    mix = build_mix("prompt" if grpo else "preference", work / f"mix-{stage}-{shape}", model_dir,
                    prompts_needed, args.prompt_len, args.reply_len)
    build_s = time.time() - t0
    runs_dir = work / "runs"
    name = f"bench-{figure}" + (f"-{shape}" if args.shape else "")
    shutil.rmtree(runs_dir / name, ignore_errors=True)
    cfg = {
        "model": {"name_or_path": str(model_dir), "method": method, "quant": "nf4", "backend": backend},
        "lora": {"r": args.rank, "alpha": args.rank, "dropout": 0.0, "target_modules": LINEARS},
        "train": {"stage": stage, "max_steps": args.steps, "micro_batch": micro_batch, "grad_accum": accum,
                  "max_seq_len": args.prompt_len + 2 * args.reply_len + 64, "learning_rate": 1e-5,
                  "warmup_steps": 0, "logging_steps": 1, "save_steps": 100000, "eval_steps": 0,
                  "optimizer": "auto",
                  "gradient_checkpointing": "unsloth" if backend != "peft" else "on"},
        "rl": {"beta": 0.1, "kl_beta": args.kl_beta, "max_prompt_len": args.prompt_len + 64,
               "max_completion_len": args.completion_len, "num_generations": args.generations,
               "temperature": 1.0, "rewards": ["format", "answer"], "rollout": args.rollout},
        "data": {"mix_dir": str(mix)},
        "runs_dir": str(runs_dir),
    }
    run_dir, status, wall = train_cli(work, name, cfg, args.phase_timeout, figure)
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    rows = [r for r in rows if r.get("loss") is not None]
    start = next(r for r in rows if r["step"] == args.warmup)
    end = rows[-1]
    seconds = end["elapsed_s"] - start["elapsed_s"]
    steps = end["step"] - start["step"]
    timed = rows[rows.index(start) + 1:]
    lengths = [r["completions/mean_length"] for r in timed if r.get("completions/mean_length") is not None]
    log_text = (run_dir / "train.log").read_text(errors="replace") if (run_dir / "train.log").is_file() else ""
    rollout = status.get("rollout")
    fallback = next((line.split("rollouts: ", 1)[1] for line in log_text.splitlines()
                     if "rollouts: " in line and "generating with model.generate" in line), None)
    if rollout == "chat" and fallback:
        rollout = "chat -> model.generate (the engine could not take the model)"
    return {"stage": stage, "shape": shape, "method": method, "backend": status.get("backend"),
            "steps_per_s": steps / seconds if seconds > 0 else None,
            "s_per_step": seconds / steps if steps else None,
            "tokens_per_s": (end["tokens"] - start["tokens"]) / seconds if seconds > 0 else None,
            "peak_alloc_gib": status.get("peak_alloc_gib"), "peak_reserved_gib": status.get("peak_reserved_gib"),
            "nvml_used_gib": status.get("nvml_used_gib"), "nvml_process_gib": status.get("nvml_process_gib"),
            "micro_batch": status.get("micro_batch") or micro_batch,
            "grad_accum": accum, "num_generations": args.generations if grpo else None,
            "completion_len": args.completion_len if grpo else None,
            "completion_mean_length": sum(lengths) / len(lengths) if lengths else None,
            "prompt_len": args.prompt_len, "reply_len": None if grpo else args.reply_len,
            "rollout": rollout, "rollout_fallback": fallback,
            "timed_steps": steps, "build_s": round(build_s, 1), "wall_s": round(wall, 1),
            "loss_first": rows[0]["loss"], "loss_last": end["loss"],
            "margin_last": end.get("rewards/margins"), "reward_last": end.get("reward")}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--figures", default=",".join(FIGURES), help="Comma list of: " + ", ".join(FIGURES))
    p.add_argument("--shape", choices=sorted(SHAPES), help="Run every figure on this shape instead (the CPU "
                                                           "smoke test uses tiny).")
    p.add_argument("--work", default="/tmp/qwentune-bench", help="Scratch folder (models, mixes, runs).")
    p.add_argument("--out", default=str(ROOT / "bench" / "results"), help="Folder of rl_speed.jsonl.")
    p.add_argument("--steps", type=int, default=6, help="Optimizer steps per figure.")
    p.add_argument("--warmup", type=int, default=2, help="Steps left out of the timing (compile, graphs).")
    p.add_argument("--generations", type=int, default=8, help="GRPO completions per prompt.")
    p.add_argument("--completion-len", type=int, default=256, help="GRPO completion tokens.")
    p.add_argument("--prompt-len", type=int, default=256, help="Prompt tokens (GRPO and DPO).")
    p.add_argument("--reply-len", type=int, default=512, help="DPO chosen / rejected reply tokens.")
    p.add_argument("--kl-beta", type=float, default=0.04, help="GRPO's KL weight (>0 adds the reference "
                                                              "forward, as most recipes do).")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--rollout", default="auto", choices=ROLLOUTS)
    p.add_argument("--backend", default="auto", choices=BACKENDS)
    p.add_argument("--phase-timeout", type=int, default=300, help="Seconds before a figure is given up.")
    args = p.parse_args(argv)

    import torch

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    Path(args.work).mkdir(parents=True, exist_ok=True)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    common = {"bench": "rl_speed", "device": device, "date": time.strftime("%Y-%m-%d %H:%M"),
              "torch": torch.__version__, "steps": args.steps, "warmup": args.warmup, "rank": args.rank}
    failed = 0
    print("\n| figure | steps/s | tokens/s | peak alloc GiB | NVML used GiB | rollout |")
    for figure in args.figures.split(","):
        if figure not in FIGURES:
            raise SystemExit(f"unknown figure {figure!r}; choose from {', '.join(FIGURES)}")
        t = time.time()
        try:
            rec = dict(common, figure=figure, **run_figure(args, figure))
        except Exception as exc:  # keep going: the other figures are still worth having
            failed += 1
            rec = dict(common, figure=figure, error=str(exc)[-2000:])
            log(f"{figure} FAILED: {exc}")
        with (out_dir / "rl_speed.jsonl").open("a") as f:
            f.write(json.dumps(rec) + "\n")
        if "error" not in rec:
            log(f"{figure}: {rec['steps_per_s']:.3f} steps/s, {rec['tokens_per_s']:.0f} tok/s, peak "
                f"{rec['peak_alloc_gib'] or 0:.2f} GiB ({time.time() - t:.0f}s)")
            print(f"| {figure} | {rec['steps_per_s']:.3f} | {rec['tokens_per_s']:.0f} | "
                  f"{rec['peak_alloc_gib'] or 0:.2f} | {rec['nvml_used_gib'] or 0:.2f} | {rec['rollout'] or ''} |",
                  flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
