"""Trainer speed benchmark: QwenTune's trainer vs a bare Unsloth loop vs plain transformers + PEFT + bnb.

Run on a GPU machine (one call measures everything, so the figures compare):

    python bench/train_speed.py --shape 8b --out bench/results

What it measures, on a random-weight model with Qwen3's real shapes (no weights are downloaded):
  * uniform   rows of exactly --seq tokens, micro-batch 2, QLoRA nf4 (quantized on load), r=16 on all
              7 linear layers, gradient checkpointing:
                project  `python -m core train` (the GUI's code path: worker, callbacks, metrics)
                bare     a bare Unsloth loop (FastLanguageModel, 8-bit AdamW, nothing else)
                plain    transformers + PEFT + bitsandbytes (prepare_model_for_kbit_training, the
                         usual recipe), same loop
  * mixed     short chat rows + long reasoning rows through the project trainer with
              train.packing = off (padded batches), packing, bucket, padding_free (and auto)
Reported: non-padding tokens/s (steady state, after --warmup optimizer steps), peak GiB
(torch.cuda.max_memory_allocated during training, and NVML's used memory), and model FLOP
utilisation (PaLM-style MFU: forward + backward FLOPs of the model per token, no recompute).

Every phase runs in its own process (clean GPU memory, Unsloth's patches only where wanted).
Results are appended to <out>/train_speed.jsonl with the card's name.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from core.choices import BACKENDS  # noqa: E402

SHAPES = {
    # Qwen3-8B's config.json
    "8b": dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
               num_key_value_heads=8, head_dim=128, vocab_size=151936, tie_word_embeddings=False),
    # Qwen3-14B's
    "14b": dict(hidden_size=5120, intermediate_size=17408, num_hidden_layers=40, num_attention_heads=40,
                num_key_value_heads=8, head_dim=128, vocab_size=151936, tie_word_embeddings=False),
    # Qwen3-4B's
    "4b": dict(hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32,
               num_key_value_heads=8, head_dim=128, vocab_size=151936, tie_word_embeddings=True),
    # Qwen3-0.6B's
    "0.6b": dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                 num_key_value_heads=8, head_dim=128, vocab_size=151936, tie_word_embeddings=True),
    # a few layers of the 8B shape: quick checks of the whole script
    "small": dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=4, num_attention_heads=32,
                  num_key_value_heads=8, head_dim=128, vocab_size=151936, tie_word_embeddings=False),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, vocab_size=1024, tie_word_embeddings=True),
}
# train.packing modes compared with padded batches (train.packing = off) on the mixed rows
PACKED_MODES = ("padding_free", "packing", "bucket", "auto")  # auto: what the GUI default resolves to
LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# Dense bf16 tensor-core peak per GPU (vendor datasheets), first match wins.
PEAK_TFLOPS = [("H100 PCIE", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200 NVL", 835.0),
               ("H200", 989.0), ("A100", 312.0), ("L40S", 362.0), ("L4", 121.0), ("A10", 125.0),
               ("RTX 4090", 165.2), ("RTX 3090", 71.0), ("RTX 3060", 25.0)]


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ------------------------------------------------------------------------------------ FLOPs
def flops_per_token(shape: dict, rank: int, seq_len: int | None) -> float:
    """Model FLOPs per trained token: forward 2n + input-grad 2n for every linear (n weights, LoRA's
    included), weight-grad 2n for LoRA only; causal attention 4*L*H*D per (q, k) pair, x3."""
    h, i, layers = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"]
    q = shape["num_attention_heads"] * shape["head_dim"]
    kv = shape["num_key_value_heads"] * shape["head_dim"]
    dims = [(h, q), (h, kv), (h, kv), (q, h), (h, i), (h, i), (i, h)]
    base = layers * sum(a * b for a, b in dims) + h * shape["vocab_size"]
    lora = layers * sum(rank * (a + b) for a, b in dims)
    flops = 4 * (base + lora) + 2 * lora
    if seq_len:
        pairs = seq_len * (seq_len + 1) / 2
        flops += 3 * 4 * layers * shape["num_attention_heads"] * shape["head_dim"] * pairs / seq_len
    return flops


def peak_tflops(name: str) -> float | None:
    upper = name.upper()
    for key, value in PEAK_TFLOPS:
        if key in upper:
            return value
    return None


# ------------------------------------------------------------------------------------- build
def build_model(shape_name: str, out: Path, tokenizer_dir: Path | None = None) -> None:
    """Random-weight Qwen3 of the given shape (bf16 safetensors) with the tokenizer of
    ``tokenizer_dir``, by default the demo model's."""
    import torch
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    from core.demo import ensure_demo_model

    if (out / "config.json").exists():
        log(f"model {out} exists")
        return
    tok = AutoTokenizer.from_pretrained(tokenizer_dir or ensure_demo_model())
    shape = SHAPES[shape_name]
    cfg = Qwen3Config(**shape, max_position_embeddings=40960, rope_theta=1000000.0,
                      bos_token_id=tok.convert_tokens_to_ids("<|endoftext|>"),
                      eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"), pad_token_id=tok.pad_token_id,
                      torch_dtype="bfloat16")
    t0 = time.time()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    with torch.device(device):
        torch.set_default_dtype(torch.bfloat16)
        model = Qwen3ForCausalLM(cfg)
        torch.set_default_dtype(torch.float32)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True, max_shard_size="4GB")
    tok.save_pretrained(tmp)
    tmp.rename(out)
    n = sum(p.numel() for p in model.parameters())
    log(f"built {shape_name} model ({n / 1e9:.2f}B params) in {time.time() - t0:.1f}s -> {out}")


def _words(rng: random.Random, n: int) -> str:
    vocab = ["the", "model", "learns", "to", "reason", "step", "by", "about", "numbers", "and", "words", "so",
             "that", "each", "answer", "follows", "from", "facts", "given", "in", "question", "rules", "of",
             "arithmetic", "we", "know", "42", "x", "+", "=", "sum", "total"]
    return " ".join(rng.choice(vocab) for _ in range(n))


def _conv(rng, n_words: int, reasoning: bool):
    from core.data.conversation import Conversation, Message

    question = "Question: " + _words(rng, 12) + "?"
    if reasoning:
        return Conversation([Message("user", question),
                             Message("assistant", "The answer is " + _words(rng, 8) + ".",
                                     reasoning=_words(rng, n_words))], source="reasoning")
    return Conversation([Message("user", question), Message("assistant", _words(rng, n_words))], source="chat")


def fit_conv(tok, rng, target: int, reasoning: bool):
    """The longest conversation (of one seeded word stream) that renders to at most ``target`` tokens."""
    from core.data.render import render

    seed = rng.random()

    def make(n):  # the same seed gives the same words, so the length only grows with n
        return _conv(random.Random(seed), n, reasoning)

    lo, hi = 1, max(2, target)
    while lo < hi:  # binary search on the word count
        mid = (lo + hi + 1) // 2
        if render(make(mid), tok).n_tokens <= target:
            lo = mid
        else:
            hi = mid - 1
    return make(lo)


def build_data(work: Path, model_dir: Path, seq: int, uniform_rows: int, mixed_rows: int, seed: int) -> None:
    from transformers import AutoTokenizer

    from core.data.mixdir import write_mix_dir

    tok = AutoTokenizer.from_pretrained(model_dir)
    rng = random.Random(seed)

    def rows(convs):
        return [{"conversation": c.to_json(), "text": "", "n_tokens": 0, "source": c.source} for c in convs]

    if not (work / "mix-uniform" / "manifest.json").exists():
        convs = [fit_conv(tok, rng, seq, reasoning=bool(k % 2)) for k in range(uniform_rows)]
        write_mix_dir(work / "mix-uniform", rows(convs), [], {"bench": "uniform", "seq": seq})
    if not (work / "mix-mixed" / "manifest.json").exists():
        convs = []
        for _ in range(mixed_rows):
            if rng.random() < 0.5:  # long reasoning traces
                convs.append(fit_conv(tok, rng, rng.randint(seq * 2 // 5, seq - 16), True))
            else:  # short chat turns
                convs.append(fit_conv(tok, rng, rng.randint(64, min(320, seq // 2)), False))
        write_mix_dir(work / "mix-mixed", rows(convs), [], {"bench": "mixed", "seq": seq})
    log(f"data ready in {work}")


# ------------------------------------------------------------------------------ loop phases
def _batches(work: Path, model_dir: Path, seq: int, micro_batch: int):
    import torch
    from transformers import AutoTokenizer

    from core.config import TrainConfig
    from core.data.mixdir import read_mix_dir
    from core.train.data import tokenize

    tok = AutoTokenizer.from_pretrained(model_dir)
    train, _, _ = read_mix_dir(work / "mix-uniform")
    data = tokenize(train, tok, TrainConfig(max_seq_len=seq))
    out = []
    for k in range(0, data.rows - micro_batch + 1, micro_batch):
        n = min(len(x) for x in data.input_ids[k:k + micro_batch])  # equal lengths: no padding at all
        ids = torch.tensor([x[:n] for x in data.input_ids[k:k + micro_batch]])
        mask = torch.tensor([x[:n] for x in data.masks[k:k + micro_batch]])
        labels = ids.masked_fill(mask == 0, -100)
        out.append((ids, labels))
    return out


def _nvml():
    try:
        import pynvml
        import torch

        pynvml.nvmlInit()
        return pynvml, pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
    except Exception as exc:
        log(f"NVML unavailable: {exc}")
        return None, None


def bare_step(model, opt, params, micro_batches, device: str = "cuda", autocast: bool = False,
              mask: bool = False) -> tuple[int, float]:
    """One optimizer step of the bare loop: forward + backward per micro-batch, clipping, the optimizer.
    Returns (tokens, last loss); reading the loss is the one sync per step a trainer's logging does.
    ``mask``: pass an all-ones attention mask, as a trainer's collator does for rows without padding
    (the model then takes its masked attention path)."""
    import contextlib

    import torch

    tokens = 0
    for ids, labels in micro_batches:
        ids, labels = ids.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        extra = {"attention_mask": torch.ones_like(ids)} if mask else {}
        with torch.autocast(device, dtype=torch.bfloat16) if autocast else contextlib.nullcontext():
            out = model(input_ids=ids, labels=labels, **extra)
        (out.loss / len(micro_batches)).backward()
        tokens += ids.numel()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return tokens, float(out.loss.detach())


def run_loop(kind: str, args) -> dict:
    """The bare Unsloth loop or the plain transformers + PEFT + bnb loop, on the uniform rows."""
    import os as _os

    _os.environ.setdefault("UNSLOTH_DISABLE_STATISTICS", "1")
    model_dir = Path(args.work) / f"model-{args.shape}"
    t_load = time.time()
    if kind == "bare":
        from unsloth import FastLanguageModel  # noqa: I001  (first, as Unsloth wants)
        import torch

        model, _tok = FastLanguageModel.from_pretrained(str(model_dir), max_seq_length=args.seq,
                                                        dtype=torch.bfloat16, load_in_4bit=True,
                                                        use_exact_model_name=True)
        model = FastLanguageModel.get_peft_model(model, r=args.rank, lora_alpha=args.rank, lora_dropout=0.0,
                                                 target_modules=LINEARS, bias="none",
                                                 use_gradient_checkpointing="unsloth", random_state=3407)
    else:
        import torch
        from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
        from transformers import AutoModelForCausalLM, BitsAndBytesConfig

        q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.bfloat16)
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), quantization_config=q, dtype=torch.bfloat16,
                                                     device_map={"": 0}, attn_implementation="sdpa")
        model.config.use_cache = False
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
        model = get_peft_model(model, LoraConfig(r=args.rank, lora_alpha=args.rank, lora_dropout=0.0,
                                                 target_modules=LINEARS, bias="none", task_type="CAUSAL_LM"))
    import bitsandbytes as bnb

    load_s = time.time() - t_load
    params = [p for p in model.parameters() if p.requires_grad]
    opt = bnb.optim.AdamW8bit(params, lr=2e-4, weight_decay=0.01)
    batches = _batches(Path(args.work), model_dir, args.seq, args.micro_batch)
    need = args.steps * args.accum
    if len(batches) < need:
        raise SystemExit(f"need {need} micro-batches, have {len(batches)}")
    pynvml, handle = _nvml()
    nvml_peak = 0.0
    model.train()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t_start = None
    tokens = 0
    losses = []
    for step in range(args.steps):
        if step == args.warmup:
            torch.cuda.synchronize()
            t_start = time.perf_counter()
            tokens = 0
        n, loss = bare_step(model, opt, params, batches[step * args.accum:(step + 1) * args.accum])
        tokens += n
        losses.append(loss)
        if handle is not None:
            nvml_peak = max(nvml_peak, pynvml.nvmlDeviceGetMemoryInfo(handle).used / 2**30)
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - t_start
    return {"tokens_per_s": tokens / elapsed, "peak_alloc_gib": torch.cuda.max_memory_allocated() / 2**30,
            "nvml_used_gib": nvml_peak, "load_s": load_s, "timed_steps": args.steps - args.warmup,
            "loss_first": losses[0], "loss_last": losses[-1]}


# --------------------------------------------------------------------------------- project
def train_cli(work: Path, name: str, cfg: dict, timeout: int, what: str) -> tuple[Path, dict, float]:
    """`python -m core train` on ``cfg`` written as work/<name>.yaml: (run folder, status, wall seconds).
    A run that does not end done raises with ``what``, its error and the output's tail."""
    import yaml

    cfg_path = work / f"{name}.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "core", "train", str(cfg_path), "--name", name], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
    wall = time.time() - t0
    run_dir = Path(cfg["runs_dir"]) / name
    status = json.loads((run_dir / "status.json").read_text())
    if proc.returncode != 0 or status.get("state") != "done":
        tail = (proc.stdout + proc.stderr)[-3000:]
        raise RuntimeError(f"{what} failed (rc {proc.returncode}, {status.get('error')}):\n{tail}")
    return run_dir, status, wall


def run_project(args, mix: str, packing: str, name: str, method: str = "qlora") -> dict:
    """`python -m core train` on a generated config: exactly what the GUI starts."""

    work = Path(args.work)
    runs_dir = work / "runs"
    shutil.rmtree(runs_dir / name, ignore_errors=True)
    cfg = {
        "model": {"name_or_path": str(work / f"model-{args.shape}"), "method": method, "quant": "nf4",
                  "backend": args.backend},
        "lora": {"r": args.rank, "alpha": args.rank, "dropout": 0.0, "target_modules": LINEARS},
        "train": {"max_steps": args.steps, "micro_batch": args.micro_batch, "grad_accum": args.accum,
                  "max_seq_len": args.seq, "learning_rate": 2e-4, "warmup_steps": 0, "logging_steps": 1,
                  "save_steps": 100000, "eval_steps": 0, "packing": packing, "optimizer": "auto",
                  "gradient_checkpointing": "unsloth" if args.backend != "peft" else "on"},
        "data": {"mix_dir": str(work / mix)},
        "runs_dir": str(runs_dir),
    }
    run_dir, status, wall = train_cli(work, name, cfg, args.phase_timeout, f"project run {name}")
    metrics = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    train_rows = [m for m in metrics if m.get("loss") is not None]
    start = next(m for m in train_rows if m["step"] == args.warmup)
    end = train_rows[-1]
    tps = (end["tokens"] - start["tokens"]) / (end["elapsed_s"] - start["elapsed_s"])
    return {"tokens_per_s": tps, "peak_alloc_gib": status.get("peak_alloc_gib"),
            "nvml_used_gib": status.get("nvml_used_gib"), "backend": status.get("backend"),
            "wall_s": wall, "timed_steps": end["step"] - start["step"], "loss_first": train_rows[0]["loss"],
            "loss_last": end["loss"], "packing": status.get("packing") or packing, "packing_requested": packing,
            "notices": status.get("notices"),
            "run_dir": str(run_dir)}


# ------------------------------------------------------------------------------------ main
def _phase_subprocess(args, phase: str) -> dict:
    cmd = [sys.executable, __file__, "--phase", phase] + _common_flags(args)
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=args.phase_timeout)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"phase {phase} failed (rc {proc.returncode}):\n{(proc.stdout + proc.stderr)[-4000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def _common_flags(args) -> list[str]:
    return ["--shape", args.shape, "--work", args.work, "--seq", str(args.seq), "--steps", str(args.steps),
            "--warmup", str(args.warmup), "--accum", str(args.accum), "--micro-batch", str(args.micro_batch),
            "--rank", str(args.rank), "--backend", args.backend]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", default="8b", choices=sorted(SHAPES))
    p.add_argument("--work", default="/tmp/qwentune-bench", help="Scratch folder (model, data, runs).")
    p.add_argument("--out", default=str(ROOT / "bench" / "results"), help="Folder of train_speed.jsonl.")
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--steps", type=int, default=10, help="Optimizer steps per measurement.")
    p.add_argument("--warmup", type=int, default=3, help="Optimizer steps left out of the timing (compile, "
                                                        "autotune).")
    p.add_argument("--phase-timeout", type=int, default=240, help="Seconds before a phase is given up.")
    p.add_argument("--accum", type=int, default=2)
    p.add_argument("--micro-batch", type=int, default=2)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--backend", default="unsloth", choices=BACKENDS)
    p.add_argument("--phases", default="project,bare,plain,mixed",
                   help="Comma list of: project, project-lora (16-bit LoRA), bare, plain, mixed.")
    p.add_argument("--mixed-modes", default="off,packing,bucket,padding_free")
    p.add_argument("--project-packing", default="auto", help="train.packing of the uniform project run "
                                                            "(auto: the GUI's default).")
    p.add_argument("--phase", help=argparse.SUPPRESS)  # internal: run one loop phase in this process
    args = p.parse_args(argv)

    if args.phase:
        result = run_loop(args.phase, args)
        print("RESULT " + json.dumps(result), flush=True)
        return 0

    import torch

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    model_dir = work / f"model-{args.shape}"
    t0 = time.time()
    build_model(args.shape, model_dir)
    # Enough uniform rows for every micro-batch; mixed rows for packing's appetite too.
    build_data(work, model_dir, args.seq, uniform_rows=args.steps * args.accum * args.micro_batch + 4,
               mixed_rows=max(200, args.steps * args.accum * args.micro_batch * 6), seed=7)
    log(f"setup {time.time() - t0:.1f}s on {device}")
    shape = SHAPES[args.shape]
    fpt = flops_per_token(shape, args.rank, args.seq)
    peak = peak_tflops(device)
    common = {"device": device, "shape": args.shape, "seq": args.seq, "micro_batch": args.micro_batch,
              "accum": args.accum, "steps": args.steps, "warmup": args.warmup, "rank": args.rank,
              "method": "qlora-nf4", "date": time.strftime("%Y-%m-%d %H:%M"),
              "torch": torch.__version__}
    results: dict[str, dict] = {}
    phases = args.phases.split(",")

    def record(key: str, res: dict, uniform: bool) -> None:
        res = dict(common, setup=key, **res)
        if uniform:
            res["mfu"] = res["tokens_per_s"] * fpt / (peak * 1e12) if peak else None
        results[key] = res
        with (out_dir / "train_speed.jsonl").open("a") as f:
            f.write(json.dumps(res) + "\n")
        log(f"{key}: {res['tokens_per_s']:.0f} tok/s, peak {res.get('peak_alloc_gib') or 0:.2f} GiB"
            + (f", MFU {res['mfu']:.1%}" if res.get("mfu") else ""))

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    tasks = []
    for phase in phases:
        tasks += [f"mixed-{m}" for m in args.mixed_modes.split(",")] if phase == "mixed" else [phase]
    for task in tasks:
        t = time.time()
        try:
            if task == "project":
                record(task, run_project(args, "mix-uniform", args.project_packing, "bench-project"), True)
            elif task == "project-lora":
                record(task, run_project(args, "mix-uniform", "padding_free", "bench-project-lora", "lora"), True)
            elif task in ("bare", "plain"):
                record(task, _phase_subprocess(args, task), True)
            elif task.startswith("mixed-"):
                mode = task[len("mixed-"):]
                record(task, run_project(args, "mix-mixed", mode, f"bench-{task}"), False)
            else:
                raise SystemExit(f"unknown phase {task}")
        except Exception as exc:  # keep going: the other phases' figures are still worth having
            log(f"phase {task} FAILED: {exc}")
            results[task] = {"error": str(exc)[-2000:]}
            with (out_dir / "train_speed.jsonl").open("a") as f:
                f.write(json.dumps(dict(common, setup=task, error=str(exc)[-2000:])) + "\n")
        log(f"phase {task} took {time.time() - t:.0f}s")

    summary = dict(common, setup="summary")

    def tps(key):
        return results.get(key, {}).get("tokens_per_s")

    if tps("project") and tps("bare"):
        summary["project_vs_bare"] = tps("project") / tps("bare")
    if tps("project") and tps("plain"):
        summary["project_vs_plain"] = tps("project") / tps("plain")
        pa, pp = results["project"].get("peak_alloc_gib"), results["plain"].get("peak_alloc_gib")
        if pa and pp:
            summary["project_peak_vs_plain"] = pa / pp
    if tps("mixed-off"):
        for mode in PACKED_MODES:
            if tps(f"mixed-{mode}"):
                summary[f"mixed_{mode}_vs_padded"] = tps(f"mixed-{mode}") / tps("mixed-off")
    mixed_best = max(summary.get(f"mixed_{m}_vs_padded", 0) for m in PACKED_MODES)
    # A target this call did not measure is null, not false.
    summary["targets"] = {
        "project_vs_bare>=0.95": summary["project_vs_bare"] >= 0.95 if "project_vs_bare" in summary else None,
        "project_vs_plain>=3.5": summary["project_vs_plain"] >= 3.5 if "project_vs_plain" in summary else None,
        "project_peak_vs_plain<=0.4": (0 < summary["project_peak_vs_plain"] <= 0.4
                                       if "project_peak_vs_plain" in summary else None),
        "mixed_best_vs_padded>=1.5": mixed_best >= 1.5 if mixed_best else None,
    }
    with (out_dir / "train_speed.jsonl").open("a") as f:
        f.write(json.dumps(summary) + "\n")
    print("\n| setup | tokens/s | peak alloc GiB | NVML used GiB | MFU |")
    print("| --- | --- | --- | --- | --- |")
    for key, r in results.items():
        if "error" in r:
            print(f"| {key} | FAILED | | | |")
            continue
        mfu = f"{r['mfu']:.1%}" if r.get("mfu") else ""
        print(f"| {key} | {r['tokens_per_s']:.0f} | {r.get('peak_alloc_gib') or 0:.2f} | "
              f"{r.get('nvml_used_gib') or 0:.2f} | {mfu} |")
    print(json.dumps({k: v for k, v in summary.items() if k not in common}, indent=1))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
