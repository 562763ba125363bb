"""Peak-VRAM sweep: QwenTune's own trainer on random-init Qwen3 shapes, for calibrating the estimator.

Run on a GPU machine (resumable: run it again to continue where a time budget or a crash stopped it):

    python bench/vram_sweep.py                 # ~17 points (~9 min on an H100), stops before --time-budget
    python bench/vram_sweep.py --quick         # one point per model x method (~5 min)
    python bench/vram_sweep.py --extended      # ~30 points, for a tighter fit (run it twice or more)
    python bench/vram_sweep.py --wide          # 8k-32k rows, ranks 64/128, PEFT; some held out
    python bench/vram_sweep.py --smoke         # CPU plumbing check: demo-sized shape, one point
    python bench/vram_sweep.py --stage all     # dpo / orpo / grpo points (train.stage, the rl settings)
    python bench/vram_sweep.py --stage all --wide --lanes 6   # both, up to 6 points at once on one card
    python bench/vram_sweep.py --strategy fsdp --gpus 2   # per-card peaks on 2 GPUs (ddp or fsdp)
    python bench/vram_sweep.py --smoke --stage dpo   # CPU check of one stage point
    python bench/fit_vram.py --write           # then refit core/hardware/vram_coefficients.json

Several GPUs (``--strategy ddp|fsdp --gpus N``): a few 16-bit LoRA and QLoRA points trained on N
cards through the same launcher the app uses (train.strategy, train.gpus); rank 0 records its
card's peak, which the estimator's per-card figure is compared with. ``--smoke --strategy ddp``
runs two CPU processes (QWENTUNE_CPU_RANKS) to check the plumbing.

Stage points (``--stage dpo|orpo|grpo|all``) measure the estimator's stage terms, which start as
physical counts nobody has measured: dpo / orpo rows are synthetic preference pairs (chosen and
rejected replies of the same length, so each sequence is about seq_len tokens), grpo rows are prompts
of about rl.max_prompt_len tokens with a reference answer; the random-init model almost never
samples the end-of-sequence token, so every completion runs to rl.max_completion_len (the worst
case the estimate is for). grad_accum is 1, so the rollouts of a step decode micro_batch completions.

Per point it runs `python -m core train CONFIG.yaml` in a subprocess (exactly what the GUI runs),
max_steps 3, on
  * a checkpoint with the real Qwen3 shape whose weights are a SPARSE zero-filled safetensors file
    (the header is written, then the file is truncated to full size: no disk space used, and memory
    does not depend on the values), so even Qwen3-32B (65 GB in bf16) fits a small disk. QLoRA
    points load the same bf16 file and quantize it to nf4 on load (model.quant: nf4).
  * the demo tokenizer copied next to it (token ids stay within its small vocabulary; memory does
    not depend on which ids), and a saved mix folder of synthetic conversations whose rows are
    about seq_len tokens long (core.data.mixdir.write_mix_dir).
The trainer records torch.cuda.max_memory_allocated and NVML's peak used memory in
runs/<name>/status.json; one JSON line per point is appended to bench/results/vram.jsonl with the
card's name (torch.cuda.get_device_name). An out-of-memory point is recorded as status "oom" and the
sweep goes on. Points already in the file for this card (ok or oom) are skipped.

``--lanes N`` trains up to N points at once on one big card, each in its own runs folder, admitted
while the sum of their estimates (x 1.3, + 1 GiB) fits the card. torch's peak is per process anyway;
NVML's whole-card figure would count the neighbours, so such a line's ``nvml_used_gib`` is the
process's own NVML count plus what the card used idle (the whole-card reading is kept as
``nvml_device_gib``). A point that runs out of memory beside others is tried again alone.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEFAULT_OUT = ROOT / "bench" / "results" / "vram.jsonl"
DEFAULT_WORK = Path(os.environ.get("QWENTUNE_VRAM_WORK", "/tmp/qwentune-vram"))
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "generation_config.json")
RANK = 16
MAX_STEPS = 3
ROW_MARGIN = 8  # rows end a few tokens short of seq_len, so none is dropped as too long
SMOKE_MODEL = "demo-shape"
SHARD_BYTES = 4 << 30  # like Hugging Face checkpoints: no single huge mmap when loading


@dataclass(frozen=True)
class Point:
    model: str
    method: str
    seq_len: int
    micro_batch: int
    backend: str = "auto"  # as requested; the line records the backend the trainer used
    grad_ckpt: str = "unsloth"
    rank: int = RANK
    held_out: bool = False  # kept out of the fit (bench/fit_vram.py): these points judge it
    stage: str = "sft"  # train.stage; the rl settings below matter for the stages beyond sft
    prompt_len: int = 256  # rl.max_prompt_len (grpo)
    completion_len: int = 512  # rl.max_completion_len (grpo)
    num_generations: int = 4  # rl.num_generations (grpo)
    kl_beta: float = 0.0  # rl.kl_beta (grpo: > 0 adds the reference pass)
    strategy: str = "single"  # train.strategy
    gpus: int = 1  # train.gpus (a count) for ddp / fsdp

    @property
    def name(self) -> str:
        rank = f"-r{self.rank}" if self.rank != RANK else ""
        stage = "" if self.stage == "sft" else f"-{self.stage}"
        if self.stage == "grpo":
            stage += f"-p{self.prompt_len}-c{self.completion_len}-g{self.num_generations}"
            stage += f"-kl{self.kl_beta:g}" if self.kl_beta else ""
        cards = "" if self.strategy == "single" else f"-{self.strategy}{self.gpus}"
        return (f"vram-{self.model}-{self.method}-s{self.seq_len}-b{self.micro_batch}-{self.backend}-"
                f"{self.grad_ckpt}{rank}{stage}{cards}").replace(".", "_")

    def key(self, card: str) -> tuple:
        base = (card, self.model, self.method, self.seq_len, self.micro_batch, self.rank, self.grad_ckpt,
                self.backend)
        if self.stage != "sft":
            base += (self.stage, *self.rl_key())
        return base if self.strategy == "single" else base + (self.strategy, self.gpus)

    def rl(self) -> dict:
        """The run's rl section (and what a line records for bench/fit_vram.py's point_setup)."""
        return {"max_prompt_len": self.prompt_len, "max_completion_len": self.completion_len,
                "num_generations": self.num_generations, "kl_beta": self.kl_beta}

    def rl_key(self) -> tuple:
        return (self.prompt_len, self.completion_len, self.num_generations, float(self.kl_beta)) \
            if self.stage == "grpo" else ()


# ------------------------------------------------------------------------------------------ grid
ROUNDS: list[list[tuple[str, str, int, int]]] = [
    # 1 (--quick): every required model x method once, at the usual setting
    [("qwen3-0.6b", "lora", 2048, 1), ("qwen3-0.6b", "qlora", 2048, 2), ("qwen3-4b", "lora", 2048, 2),
     ("qwen3-4b", "qlora", 2048, 1), ("qwen3-8b", "lora", 2048, 1), ("qwen3-8b", "qlora", 2048, 2),
     ("qwen3-14b", "lora", 2048, 1), ("qwen3-14b", "qlora", 2048, 1), ("qwen3-32b", "qlora", 2048, 1)],
    # 2: long rows (activations and logits dominate) and short rows (weights dominate)
    [("qwen3-0.6b", "qlora", 4096, 2), ("qwen3-4b", "lora", 4096, 1), ("qwen3-8b", "qlora", 4096, 1),
     ("qwen3-8b", "lora", 512, 2), ("qwen3-14b", "qlora", 4096, 2), ("qwen3-32b", "qlora", 512, 2)],
    # 3 (--extended): more of the same, for a tighter fit when there is time
    [("qwen3-0.6b", "lora", 512, 2), ("qwen3-4b", "qlora", 512, 1), ("qwen3-8b", "qlora", 512, 2),
     ("qwen3-14b", "lora", 512, 1), ("qwen3-32b", "qlora", 4096, 1), ("qwen3-0.6b", "lora", 4096, 1),
     ("qwen3-4b", "qlora", 4096, 2), ("qwen3-8b", "lora", 4096, 2), ("qwen3-14b", "lora", 4096, 1),
     ("qwen3-14b", "qlora", 512, 2), ("qwen3-32b", "qlora", 2048, 2), ("qwen3-8b", "qlora", 2048, 1)],
]
# transformers + PEFT is what users without Unsloth get; a few points calibrate that backend.
PEFT_POINTS = [("qwen3-4b", "qlora", 2048, 1), ("qwen3-0.6b", "lora", 2048, 2), ("qwen3-8b", "qlora", 2048, 2)]


# --wide: what the first rounds never reached. Long rows up to Qwen3's native 32k context (QLoRA,
# where they fit a card), LoRA ranks 64 and 128, and the transformers + PEFT backend beyond one
# setting. Every third point or so is held out of the fit (held=True) to judge it; the figure to
# report is the held-out error. Ordered so that a time budget leaves a spread of each kind.
WIDE: list[tuple] = [
    # (model, method, seq_len, micro_batch, backend, grad_ckpt, rank, held)
    ("qwen3-8b", "qlora", 8192, 1, "auto", "unsloth", 16, False),
    ("qwen3-8b", "qlora", 2048, 2, "auto", "unsloth", 64, False),
    ("qwen3-4b", "qlora", 2048, 2, "peft", "on", 16, False),
    ("qwen3-14b", "qlora", 16384, 1, "auto", "unsloth", 16, True),
    ("qwen3-4b", "qlora", 32768, 1, "auto", "unsloth", 16, False),
    ("qwen3-8b", "qlora", 2048, 2, "auto", "unsloth", 128, True),
    ("qwen3-0.6b", "lora", 8192, 1, "peft", "on", 16, False),
    ("qwen3-8b", "qlora", 4096, 1, "peft", "on", 16, True),
    ("qwen3-14b", "qlora", 32768, 1, "auto", "unsloth", 16, False),
    ("qwen3-4b", "qlora", 8192, 2, "auto", "unsloth", 64, False),
    ("qwen3-8b", "qlora", 16384, 1, "auto", "unsloth", 16, False),
    ("qwen3-4b", "lora", 4096, 1, "auto", "unsloth", 128, False),
    ("qwen3-4b", "qlora", 8192, 1, "peft", "on", 16, False),
    ("qwen3-8b", "qlora", 32768, 1, "auto", "unsloth", 16, True),
    ("qwen3-4b", "lora", 2048, 2, "peft", "on", 64, True),
    ("qwen3-14b", "qlora", 8192, 1, "auto", "unsloth", 128, False),
    ("qwen3-4b", "qlora", 16384, 1, "auto", "unsloth", 16, True),
    ("qwen3-8b", "qlora", 16384, 1, "peft", "on", 16, False),
    ("qwen3-14b", "qlora", 4096, 1, "peft", "on", 64, True),
    # transformers + PEFT at ranks 64 / 128 and on 14B: the first wide sweep fitted four rank-16 PEFT
    # points only, too few to free the backend's coefficients (its held-out error was 7%)
    ("qwen3-8b", "qlora", 2048, 2, "peft", "on", 64, False),
    ("qwen3-14b", "qlora", 2048, 1, "peft", "on", 16, False),
    ("qwen3-4b", "qlora", 4096, 1, "peft", "on", 128, False),
    ("qwen3-14b", "qlora", 8192, 1, "peft", "on", 16, False),
    ("qwen3-8b", "lora", 2048, 1, "peft", "on", 16, False),
    ("qwen3-8b", "qlora", 8192, 1, "peft", "on", 128, True),
    # transformers + PEFT at 16k and 32k tokens: the fit above saw PEFT rows up to 16k and judged
    # them only up to 8k, so the long rows the estimate is quoted for were extrapolated
    ("qwen3-14b", "qlora", 32768, 1, "peft", "on", 16, False),
    ("qwen3-8b", "qlora", 32768, 1, "peft", "on", 16, True),
    ("qwen3-4b", "qlora", 16384, 1, "peft", "on", 16, True),
    ("qwen3-14b", "qlora", 16384, 1, "peft", "on", 16, True),
    ("qwen3-4b", "qlora", 32768, 1, "peft", "on", 16, True),
]


# --stage: one set per stage beyond sft, small to large, so a time budget leaves a spread. dpo / orpo:
# (model, method, seq_len, micro_batch) with micro_batch counting preference rows; grpo: (model,
# method, micro_batch completions, prompt_len, completion_len, num_generations, kl_beta).
STAGE_POINTS: dict[str, list[tuple]] = {
    "dpo": [("qwen3-0.6b", "lora", 1024, 1), ("qwen3-4b", "qlora", 1024, 2), ("qwen3-8b", "qlora", 2048, 1),
            ("qwen3-4b", "lora", 2048, 1), ("qwen3-8b", "qlora", 1024, 2)],
    "orpo": [("qwen3-0.6b", "lora", 1024, 2), ("qwen3-4b", "qlora", 2048, 1), ("qwen3-8b", "qlora", 1024, 2)],
    "grpo": [("qwen3-0.6b", "lora", 4, 256, 512, 4, 0.0), ("qwen3-4b", "qlora", 4, 256, 1024, 4, 0.0),
             ("qwen3-0.6b", "lora", 8, 256, 1024, 8, 0.04), ("qwen3-8b", "qlora", 4, 256, 1024, 4, 0.0),
             ("qwen3-4b", "lora", 8, 512, 1024, 4, 0.04), ("qwen3-8b", "qlora", 8, 256, 2048, 8, 0.04)],
}
STAGE_NAMES = tuple(STAGE_POINTS)


# --strategy: per-card peaks on several cards. fsdp points are what one card cannot hold (or only
# just); ddp points check that a card needs what one card alone needs.
MULTI_POINTS: dict[str, list[tuple[str, str, int, int]]] = {
    "fsdp": [("qwen3-8b", "lora", 2048, 1), ("qwen3-14b", "lora", 2048, 1), ("qwen3-32b", "lora", 1024, 1),
             ("qwen3-14b", "qlora", 2048, 2), ("qwen3-32b", "qlora", 2048, 1)],
    "ddp": [("qwen3-4b", "lora", 2048, 2), ("qwen3-8b", "qlora", 2048, 2), ("qwen3-14b", "lora", 1024, 1)],
}


def multi_grid(strategy: str, gpus: int) -> list[Point]:
    return [Point(m, meth, s, b, strategy=strategy, gpus=gpus) for (m, meth, s, b) in MULTI_POINTS[strategy]]


def stage_grid(stages: tuple[str, ...]) -> list[Point]:
    out = []
    for stage in stages:
        for spec in STAGE_POINTS[stage]:
            if stage == "grpo":
                model, method, mb, prompt, completion, gens, kl = spec
                out.append(Point(model, method, prompt + completion, mb, stage=stage, prompt_len=prompt,
                                 completion_len=completion, num_generations=gens, kl_beta=kl))
            else:
                model, method, seq_len, mb = spec
                out.append(Point(model, method, seq_len, mb, stage=stage))
    return out


def wide_grid() -> list[Point]:
    return [Point(m, meth, s, b, backend, gc, rank, held) for (m, meth, s, b, backend, gc, rank, held) in WIDE]


def grid(level: str = "default", backends: tuple[str, ...] = ("auto",), peft_extra: bool = True) -> list[Point]:
    """Points in priority order, so a time budget that stops early still leaves a spread of models,
    methods, lengths and batches. Bigger models get fewer points (each costs more to load).
    quick: ~9 points (~5 min on an H100); default: ~17 (~9 min); extended: ~30; wide: WIDE."""
    if level == "wide":
        return wide_grid()
    n_rounds = {"quick": 1, "default": 2, "extended": 3}[level]
    points = [Point(m, meth, s, b, backend) for backend in backends for rnd in ROUNDS[:n_rounds]
              for (m, meth, s, b) in rnd]
    if peft_extra and "peft" not in backends:
        n_peft = {"quick": 0, "default": 2, "extended": 3}[level]
        points += [Point(m, meth, s, b, "peft", "on") for (m, meth, s, b) in PEFT_POINTS[:n_peft]]
    return points


# ---------------------------------------------------------------------------- shape checkpoints
def tensor_shapes(arch) -> list[tuple[str, list[int]]]:
    """The tensors of a dense Qwen3ForCausalLM checkpoint, in transformers' names."""
    if arch.is_moe:
        raise ValueError("the sweep builds dense Qwen3 shapes only")
    h, q, kv, i, hd = arch.hidden, arch.q_dim, arch.kv_dim, arch.intermediate, arch.head_dim
    out = [("model.embed_tokens.weight", [arch.vocab, h])]
    for n in range(arch.layers):
        p = f"model.layers.{n}."
        out += [(p + "input_layernorm.weight", [h]), (p + "post_attention_layernorm.weight", [h]),
                (p + "self_attn.q_proj.weight", [q, h]), (p + "self_attn.k_proj.weight", [kv, h]),
                (p + "self_attn.v_proj.weight", [kv, h]), (p + "self_attn.o_proj.weight", [h, q]),
                (p + "self_attn.q_norm.weight", [hd]), (p + "self_attn.k_norm.weight", [hd]),
                (p + "mlp.gate_proj.weight", [i, h]), (p + "mlp.up_proj.weight", [i, h]),
                (p + "mlp.down_proj.weight", [h, i])]
    out.append(("model.norm.weight", [h]))
    if not arch.tied_embeddings:
        out.append(("lm_head.weight", [arch.vocab, h]))
    return out


def write_sparse_safetensors(path: Path, tensors: list[tuple[str, list[int]]],
                             prefix: dict[str, bytes] | None = None) -> int:
    """A bf16 safetensors file whose data is a hole (zeros), except the 1-D norm weights (ones, the
    usual init) and, for names in ``prefix``, those bytes at the start of the tensor. Returns the
    file's apparent size in bytes."""
    prefix = prefix or {}
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    fills: list[tuple[int, bytes]] = []
    for name, shape in tensors:
        n = 1
        for d in shape:
            n *= d
        header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + 2 * n]}
        if len(shape) == 1:
            fills.append((offset, b"\x80\x3f" * n))  # bf16 1.0, little-endian
        elif name in prefix:
            fills.append((offset, prefix[name][: 2 * n]))
        offset += 2 * n
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # data starts 8-byte aligned
    start = 8 + len(blob)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for off, data in fills:
            f.seek(start + off)
            f.write(data)
        f.truncate(start + offset)
    os.replace(tmp, path)
    return start + offset


def write_sharded(out: Path, tensors: list[tuple[str, list[int]]], prefix: dict[str, bytes] | None = None,
                  shard_bytes: int = SHARD_BYTES) -> int:
    """model.safetensors, or model-0000i-of-0000n.safetensors + model.safetensors.index.json when
    the weights exceed ``shard_bytes``. Returns the total tensor bytes."""
    shards: list[list[tuple[str, list[int]]]] = [[]]
    size = used = 0
    for name, shape in tensors:
        n = 2
        for d in shape:
            n *= d
        if shards[-1] and used + n > shard_bytes:
            shards.append([])
            used = 0
        shards[-1].append((name, shape))
        used += n
        size += n
    if len(shards) == 1:
        write_sparse_safetensors(out / "model.safetensors", shards[0], prefix)
        return size
    weight_map = {}
    for i, group in enumerate(shards, 1):
        fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        write_sparse_safetensors(out / fname, group, prefix)
        weight_map.update({name: fname for name, _ in group})
    index = {"metadata": {"total_size": size}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return size


def random_bf16(rows: int, cols: int, seed: int, std: float = 0.02) -> bytes:
    """Little-endian bf16 normal(0, std) values (the top half of each float32)."""
    import numpy as np

    values = (np.random.default_rng(seed).standard_normal((rows, cols), dtype=np.float32) * std)
    return (values.view(np.uint32) >> 16).astype("<u2").tobytes()


def used_rows(tokenizer_dir: Path) -> int:
    """Token ids the demo tokenizer can produce: the embedding and LM-head rows that get values.
    All-zero rows would be 'untrained tokens' to Unsloth, which refuses to train on them."""
    config = json.loads((tokenizer_dir / "config.json").read_text(encoding="utf-8"))
    return int(config["vocab_size"])


def _demo_token_ids(tokenizer_dir: Path) -> dict:
    config = json.loads((tokenizer_dir / "config.json").read_text(encoding="utf-8"))
    return {k: config.get(k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}


def build_shape(key: str, work: Path, arch=None) -> Path:
    """<work>/shapes/<key>/: config.json + sparse model.safetensors + the demo tokenizer. Cached."""
    from core.demo import ensure_demo_model
    from core.hardware.catalog import get_model

    arch = arch or get_model(key).arch
    out = work / "shapes" / key
    done = out / "qwentune_shape.json"
    if done.exists() and json.loads(done.read_text()).get("arch") == arch.to_dict():
        return out
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    demo = ensure_demo_model()
    config = {
        "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_size": arch.hidden,
        "intermediate_size": arch.intermediate, "num_hidden_layers": arch.layers,
        "num_attention_heads": arch.heads, "num_key_value_heads": arch.kv_heads, "head_dim": arch.head_dim,
        "vocab_size": arch.vocab, "tie_word_embeddings": arch.tied_embeddings, "hidden_act": "silu",
        "max_position_embeddings": 40960, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6,
        "attention_bias": False, "attention_dropout": 0.0, "use_cache": True, "use_sliding_window": False,
        "sliding_window": None, "max_window_layers": arch.layers, "initializer_range": 0.02,
        "dtype": "bfloat16", **_demo_token_ids(demo),
    }
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    for name in TOKENIZER_FILES:
        if (demo / name).exists():
            shutil.copy2(demo / name, out / name)
    rows = min(used_rows(demo), arch.vocab)
    prefix = {"model.embed_tokens.weight": random_bf16(rows, arch.hidden, seed=1)}
    if not arch.tied_embeddings:
        prefix["lm_head.weight"] = random_bf16(rows, arch.hidden, seed=2)
    size = write_sharded(out, tensor_shapes(arch), prefix)
    done.write_text(json.dumps({"arch": arch.to_dict(), "bytes": size,
                                "note": "random-init shape for the VRAM sweep (zero weights, sparse file)"}))
    return out


# --------------------------------------------------------------------------------- synthetic mix
def _words() -> list[str]:
    from core.demo import CORPUS_PATH

    # Short plain words only: one more word is then at most a few more tokens, so rows can end
    # close to the target length.
    words = [w for w in CORPUS_PATH.read_text(encoding="utf-8").split() if w.isalpha() and len(w) <= 8]
    return words or ["token"]


def _conversation(n_words: int, seed: int):
    from core.data.conversation import Conversation, Message

    words = _words()
    reply = " ".join(words[(seed * 7919 + k) % len(words)] for k in range(n_words))
    return Conversation(messages=[Message("user", f"Question {seed}: please explain."),
                                  Message("assistant", reply)], source="synthetic", origin=f"synthetic[{seed}]")


def _built_mix(out: Path, rows: int) -> list[int] | None:
    """The row lengths of a mix an earlier point built in ``out`` with ``rows`` rows, or None."""
    manifest_path = out / "manifest.json"
    if not manifest_path.exists():
        return None
    manifest = json.loads(manifest_path.read_text())
    counts = manifest.get("row_tokens")
    return counts if counts and len(counts) == rows else None


def build_mix(seq_len: int, work: Path, tokenizer_dir: Path, rows: int = 8) -> tuple[Path, list[int]]:
    """<work>/mixes/s<seq_len>/: ``rows`` conversations of seq_len - ROW_MARGIN tokens or a little
    less under the demo tokenizer. Returns the folder and the rows' token counts. Cached."""
    from transformers import AutoTokenizer

    from core.data.mixdir import write_mix_dir
    from core.data.render import render_batch
    from core.data.tokenizer import tokenizer_info

    out = work / "mixes" / f"s{seq_len}"
    built = _built_mix(out, rows)
    if built is not None:
        return out, built
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    target = max(seq_len - ROW_MARGIN, 16)
    convs, counts = [], []
    for seed in range(rows):
        lo, hi = 1, target  # words; each word is at least one token, so target words is too many
        best = None
        while lo <= hi:  # the longest reply that stays within the target
            mid = (lo + hi) // 2
            conv = _conversation(mid, seed)
            n = render_batch([conv], tok)[0].n_tokens
            if n <= target:
                best, lo = (conv, n), mid + 1
            else:
                hi = mid - 1
        if best is None:
            raise ValueError(f"seq_len {seq_len} is too short for a conversation")
        convs.append(best[0])
        counts.append(best[1])
    rendered = render_batch(convs, tok)
    train_rows = [{"conversation": c.to_json(), "text": r.text, "n_tokens": r.n_tokens, "source": "synthetic"}
                  for c, r in zip(convs, rendered)]
    manifest = {"sources": [{"name": "synthetic", "path": "bench/vram_sweep.py", "rows": rows}], "seed": 0,
                "max_seq_len": seq_len, "tokenizer": tokenizer_info(tok), "row_tokens": counts,
                "note": "synthetic rows of about max_seq_len tokens for the VRAM sweep"}
    if out.exists():
        shutil.rmtree(out)
    write_mix_dir(out, train_rows, [], manifest)
    return out, counts


def _fit_words(target: int, n_tokens, seed: int) -> int:
    """The most words (of _words(), from ``seed`` on) whose text ``n_tokens`` counts at most ``target``."""
    lo, hi, best = 1, max(target, 1), 0
    while lo <= hi:
        mid = (lo + hi) // 2
        if n_tokens(mid) <= target:
            best, lo = mid, mid + 1
        else:
            hi = mid - 1
    if not best:
        raise ValueError(f"{target} tokens is too short for a row")
    return best


def _filler(n_words: int, seed: int) -> str:
    words = _words()
    return " ".join(words[(seed * 7919 + k) % len(words)] for k in range(n_words))


def _prompt_tokens(tok, question: str, n: int, seed: int) -> int:
    """Tokens of a prompt row as the template renders it with the generation prompt."""
    text = f"{question} {_filler(n, seed)}"
    rendered = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                       tokenize=False)
    return len(tok(rendered, add_special_tokens=False)["input_ids"])


def _chosen_tokens(tok, question: str, n: int, seed: int) -> int:
    from core.data.conversation import Conversation, Message
    from core.data.render import render_batch

    conv = Conversation(messages=[Message("user", question), Message("assistant", _filler(n, seed))])
    return render_batch([conv], tok)[0].n_tokens


def build_stage_mix(point: Point, work: Path, tokenizer_dir: Path, rows: int = 8) -> tuple[Path, list[int]]:
    """<work>/mixes/<stage>-...: the rows a stage trains on, in the #20 data contract (a preference
    row: the chosen reply last, the alternative as "rejected"; a prompt row: a user turn with
    meta.expected_answer; manifest "kind"). Returns the folder and each row's longest sequence in
    tokens. Cached."""
    from transformers import AutoTokenizer

    from core.data.conversation import Conversation, Message
    from core.data.mixdir import write_mix_dir
    from core.data.render import render_batch
    from core.data.tokenizer import tokenizer_info

    tag = f"{point.stage}-s{point.seq_len}" + (f"-p{point.prompt_len}" if point.stage == "grpo" else "")
    out = work / "mixes" / tag
    built = _built_mix(out, rows)
    if built is not None:
        return out, built
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    train_rows, counts = [], []
    for seed in range(rows):
        question = f"Question {seed}: please explain."
        if point.stage == "grpo":
            prompt_tokens = partial(_prompt_tokens, tok, question, seed=seed)
            n = _fit_words(point.prompt_len - ROW_MARGIN, prompt_tokens, seed)
            conv = Conversation(messages=[Message("user", f"{question} {_filler(n, seed)}")], source="synthetic",
                                origin=f"synthetic[{seed}]", meta={"expected_answer": str(seed + 40)})
            train_rows.append({"conversation": conv.to_json(), "source": "synthetic", "n_tokens": prompt_tokens(n)})
            counts.append(prompt_tokens(n))
            continue

        chosen_tokens = partial(_chosen_tokens, tok, question, seed=seed)
        n = _fit_words(max(point.seq_len - ROW_MARGIN, 16), chosen_tokens, seed)
        chosen = Conversation(messages=[Message("user", question), Message("assistant", _filler(n, seed))],
                              source="synthetic", origin=f"synthetic[{seed}]")
        rendered = render_batch([chosen], tok)[0]
        data = chosen.to_json()
        # The alternative reply: as long, other words (the shift keeps it within the same token count
        # give or take a few, and the pair's sequences equally long is the case the estimate is for).
        data["rejected"] = {"role": "assistant", "content": _filler(n, seed + 1000)}
        train_rows.append({"conversation": data, "text": rendered.text, "n_tokens": rendered.n_tokens,
                           "source": "synthetic"})
        counts.append(rendered.n_tokens)
    kind = "prompt" if point.stage == "grpo" else "preference"
    manifest = {"sources": [{"name": "synthetic", "path": "bench/vram_sweep.py", "rows": rows}], "seed": 0,
                "kind": kind, "max_seq_len": point.seq_len, "tokenizer": tokenizer_info(tok), "row_tokens": counts,
                "note": f"synthetic {kind} rows for the VRAM sweep's {point.stage} points"}
    if out.exists():
        shutil.rmtree(out)
    write_mix_dir(out, train_rows, [], manifest)
    return out, counts


# ------------------------------------------------------------------------------------- one point
def run_config(point: Point, shape_dir: Path, mix_dir: Path, runs_dir: Path, run_name: str) -> dict:
    from core.config import ALL_LINEAR

    if point.stage != "sft" or point.strategy != "single":
        cfg = run_config(Point(point.model, point.method, point.seq_len, point.micro_batch, point.backend,
                               point.grad_ckpt, point.rank), shape_dir, mix_dir, runs_dir, run_name)
        if point.stage != "sft":
            cfg["train"].update(stage=point.stage, packing="off")  # TRL's trainers batch the pairs / prompts
            cfg["rl"] = point.rl()
        if point.strategy != "single":
            cfg["train"].update(strategy=point.strategy, gpus=str(point.gpus))
        return cfg
    return {
        "name": run_name,
        "runs_dir": str(runs_dir),
        "model": {"name_or_path": str(shape_dir), "method": point.method,
                  "quant": "nf4" if point.method == "qlora" else "auto", "backend": point.backend},
        "lora": {"r": point.rank, "alpha": point.rank, "dropout": 0.0, "target_modules": list(ALL_LINEAR)},
        "train": {"max_steps": MAX_STEPS, "micro_batch": point.micro_batch, "grad_accum": 1,
                  "max_seq_len": point.seq_len, "gradient_checkpointing": point.grad_ckpt, "warmup_steps": 0,
                  "logging_steps": 1, "save_steps": 10000, "save_total_limit": 1, "eval_steps": 0,
                  "packing": "padding_free", "report_to": "none"},
        "data": {"mix_dir": str(mix_dir)},
    }


def _tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")[-chars:]
    except FileNotFoundError:
        return ""


def setup_fields(point: Point, arch, backend: str) -> dict:
    """The fields of a point's line that core.hardware.estimate.point_setup reads (the setup to
    estimate), for the backend that trains it."""
    fields = {"model": point.model, "method": point.method, "seq_len": point.seq_len,
              "micro_batch": point.micro_batch, "rank": point.rank, "targets": "all", "grad_ckpt": point.grad_ckpt,
              "backend": backend, "quant": "nf4" if point.method == "qlora" else "none", "arch": arch.to_dict()}
    if point.strategy != "single":
        fields.update(strategy=point.strategy, gpus=point.gpus)
    if point.stage != "sft":
        fields.update(stage=point.stage, rl=point.rl(), generation_batch=point.micro_batch)
    return fields


def prepare_point(point: Point, work: Path, arch=None) -> tuple[Path, Path, list[int]]:
    """The point's shape checkpoint and mix (built once, shared by points that match)."""
    from core.hardware.catalog import get_model

    arch = arch or get_model(point.model).arch
    shape_dir = build_shape(point.model, work, arch)
    if point.stage == "sft":
        mix_dir, row_tokens = build_mix(point.seq_len, work, shape_dir)
    else:
        mix_dir, row_tokens = build_stage_mix(point, work, shape_dir)
    return shape_dir, mix_dir, row_tokens


def run_point(point: Point, work: Path, timeout_s: float, keep_runs: bool, arch=None, cpu_ranks: int = 0,
              lane: int = 0) -> dict:
    """Train one point through the CLI and return its result line (without card and versions).
    ``cpu_ranks``: run a ddp / fsdp point as that many CPU processes (the plumbing check). ``lane``:
    the runs folder of one of several points trained at once (the trainer runs one at a time per
    runs folder)."""
    import yaml

    from core.hardware.catalog import get_model

    arch = arch or get_model(point.model).arch
    shape_dir, mix_dir, row_tokens = prepare_point(point, work, arch)
    runs_dir = work / ("runs" if not lane else f"runs-lane{lane}")
    run_name = f"{point.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    config_path = work / "configs" / f"{run_name}.yaml"
    config_path.parent.mkdir(parents=True, exist_ok=True)
    config_path.write_text(yaml.safe_dump(run_config(point, shape_dir, mix_dir, runs_dir, run_name),
                                          sort_keys=False), encoding="utf-8")
    run_dir = runs_dir / run_name
    t0 = time.perf_counter()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if cpu_ranks:
        from core.train.launch import CPU_RANKS_ENV

        env[CPU_RANKS_ENV] = str(cpu_ranks)
    try:
        proc = subprocess.run([sys.executable, "-m", "core", "train", str(config_path)], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout_s)
        rc, output = proc.returncode, proc.stdout
    except subprocess.TimeoutExpired as exc:
        rc, output = None, (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) \
            else (exc.stdout or "")
    wall = time.perf_counter() - t0
    status = {}
    if (run_dir / "status.json").exists():
        status = json.loads((run_dir / "status.json").read_text(encoding="utf-8"))
    if rc is None:
        state = "timeout"
    elif status.get("oom"):
        state = "oom"
    elif rc == 0 and status.get("state") == "done":
        state = "ok"
    else:
        state = "failed"
    line = {
        **setup_fields(point, arch, status.get("backend") or point.backend),
        "held_out": point.held_out, "backend_requested": point.backend,
        "optimizer": "adamw_8bit" if status.get("device") == "cuda" else "adamw_torch",
        "status": state, "peak_alloc_gib": status.get("peak_alloc_gib"),
        "nvml_used_gib": status.get("nvml_used_gib"), "nvml_process_gib": status.get("nvml_process_gib"),
        "gpu_name": status.get("gpu_name"),
        "row_tokens": max(row_tokens), "tokens_per_step": max(row_tokens) * point.micro_batch,
        "steps": status.get("step"), "dtype": status.get("dtype"), "train_runtime_s": status.get("train_runtime_s"),
        "wall_s": round(wall, 1), "run": run_name,
    }
    if point.strategy != "single":
        line["world_size"] = status.get("world_size")  # the peak is rank 0's card's
    if point.stage != "sft":
        per_row = point.prompt_len + point.completion_len if point.stage == "grpo" else 2 * max(row_tokens)
        line["tokens_per_step"] = per_row * point.micro_batch
    if state != "ok":
        line["error"] = status.get("error") or f"exit code {rc}"
        line["log_tail"] = _tail(run_dir / "train.log") or output[-3000:]
    if not keep_runs and state == "ok":
        shutil.rmtree(run_dir, ignore_errors=True)
        config_path.unlink(missing_ok=True)
    return line


# ---------------------------------------------------------------------------------------- driver
def card_name() -> str:
    """torch.cuda.get_device_name, asked in a short-lived process: a CUDA context held by this
    driver process for the whole sweep would count in every point's NVML reading."""
    code = "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"cannot ask torch for the GPU's name: {proc.stderr.strip()[-500:]}")
    return proc.stdout.strip().splitlines()[-1]


def versions() -> dict:
    from importlib import metadata

    out = {}
    for pkg in ("torch", "transformers", "trl", "peft", "bitsandbytes", "unsloth"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    return out


def point_key(line: dict) -> tuple:
    base = (line.get("card"), line.get("model"), line.get("method"), int(line.get("seq_len", 0)),
            int(line.get("micro_batch", 0)), int(line.get("rank", RANK)), line.get("grad_ckpt"),
            line.get("backend_requested", line.get("backend")))
    stage = line.get("stage", "sft")
    if stage != "sft":
        rl = line.get("rl") or {}
        extra = (int(rl.get("max_prompt_len", 0)), int(rl.get("max_completion_len", 0)),
                 int(rl.get("num_generations", 0)), float(rl.get("kl_beta", 0.0))) if stage == "grpo" else ()
        base += (stage, *extra)
    strategy = line.get("strategy", "single")
    return base if strategy == "single" else base + (strategy, int(line.get("gpus", 1)))


def done_keys(out: Path) -> set[tuple]:
    """Points already measured (ok or oom); failed and timed-out points are tried again."""
    keys = set()
    if out.exists():
        for n, text in enumerate(out.read_text(encoding="utf-8").splitlines(), 1):
            if not text.strip():
                continue
            try:
                line = json.loads(text)
            except json.JSONDecodeError:
                print(f"warning: {out}:{n} is not JSON; ignored", file=sys.stderr)
                continue
            if line.get("status") in ("ok", "oom"):
                keys.add(point_key(line))
    return keys


def append_line(out: Path, line: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a", encoding="utf-8") as f:
        f.write(json.dumps(line, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def nvml_card() -> tuple[float, float]:
    """The first card's used and total memory (GiB), read through NVML (no CUDA context)."""
    import pynvml

    pynvml.nvmlInit()
    try:
        info = pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(0))
        return info.used / 2**30, info.total / 2**30
    finally:
        pynvml.nvmlShutdown()


def point_need_gib(point: Point, arch) -> float:
    """What the estimator says the point takes on its card, with room for its error: the admission
    rule of --lanes (a point that ran out of memory beside others is tried again alone)."""
    from core.hardware.estimate import estimate_setup, point_setup

    est = estimate_setup(*point_setup(setup_fields(point, arch, "peft" if point.backend == "peft" else "unsloth")))
    return est.total_gib * 1.3 + 1.0


def concurrent_line(line: dict, idle_gib: float, lanes: int) -> dict:
    """A point trained beside others: NVML's whole-card figure counts them too, so the card-level
    figure the estimator is judged on is this process's own count plus what the card used idle."""
    device = line.get("nvml_used_gib")
    own = line.get("nvml_process_gib")
    return {**line, "lanes": lanes, "nvml_device_gib": device, "nvml_idle_gib": round(idle_gib, 3),
            "nvml_used_gib": round(own + idle_gib, 3) if own else None}


def run_lanes(todo: list[Point], args, work: Path, out: Path, meta: dict, arches: dict, t_start: float) -> int:
    """--lanes N: up to N points in flight, each in its own runs folder, admitted while the sum of
    their estimates fits the card. Shapes and mixes are built first, one at a time."""
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    from core.hardware.catalog import get_model

    idle, total = nvml_card()
    budget = total * 0.92 - idle - args.leave_gib
    print(f"lanes: {args.lanes}, card {total:.1f} GiB, {idle:.2f} GiB used idle; building shapes and mixes",
          flush=True)
    needs = {}
    for pt in todo:
        arch = arches.get(pt.model) or get_model(pt.model).arch
        prepare_point(pt, work, arch)
        needs[pt.name] = point_need_gib(pt, arch)
    pending = list(todo)
    alone: list[Point] = []  # ran out of memory beside others: once more, with the card to itself
    lanes_free = list(range(1, args.lanes + 1))
    flight: dict = {}
    measured = 0
    with ThreadPoolExecutor(max_workers=args.lanes) as pool:
        while pending or alone or flight:
            late = time.perf_counter() - t_start > args.time_budget
            if not late:
                used = sum(needs[pt.name] for pt, _, _ in flight.values())
                queue = alone if alone else pending
                for pt in list(queue):
                    solo = queue is alone
                    if not lanes_free or (solo and flight):
                        break
                    if flight and used + needs[pt.name] > budget:
                        continue
                    queue.remove(pt)
                    lane = lanes_free.pop(0)
                    print(f"[lane {lane}] {pt.name} (about {needs[pt.name]:.0f} GiB){' alone' if solo else ''} ...",
                          flush=True)
                    fut = pool.submit(run_point, pt, work, args.point_timeout, args.keep_runs, arches.get(pt.model),
                                      lane=lane)
                    flight[fut] = (pt, lane, solo)
                    used += needs[pt.name]
                    if solo:
                        break
            if not flight:
                if late:
                    left = len(pending) + len(alone)
                    print(f"time budget reached: {left} points left; run again to continue", flush=True)
                    break
                continue
            done, _ = wait(list(flight), return_when=FIRST_COMPLETED)
            for fut in done:
                pt, lane, solo = flight.pop(fut)
                lanes_free.append(lane)
                line = fut.result()
                if line["status"] == "oom" and not solo:
                    print(f"    {pt.name}: out of memory beside other points; again alone later", flush=True)
                    alone.append(pt)
                    continue
                line = concurrent_line({**meta, **line, "time": time.strftime("%Y-%m-%dT%H:%M:%S")},
                                       idle, 1 if solo else args.lanes)
                append_line(out, line)  # this thread only: the pool's threads run the points
                measured += 1
                peak = line["peak_alloc_gib"]
                print(f"    [lane {lane}] {line['status']}: {pt.name} backend {line['backend']}, peak alloc "
                      f"{peak if peak is not None else '-'} GiB, own NVML {line['nvml_process_gib'] or '-'} GiB "
                      f"(card {line['nvml_device_gib'] or '-'}), {line['wall_s']}s"
                      + (f"; {line.get('error', '')[:300]}" if line["status"] != "ok" else ""), flush=True)
    print(f"measured {measured} point(s) in {time.perf_counter() - t_start:.0f}s -> {out}", flush=True)
    return 0


def smoke_point(stage: str = "sft", strategy: str = "single", gpus: int = 2) -> tuple[Point, object]:
    """A demo-sized shape (the demo model's architecture), 16-bit LoRA: runs on the CPU (a ddp /
    fsdp one as ``gpus`` CPU processes)."""
    import json as _json

    from core.demo import ensure_demo_model
    from core.hardware.catalog import Arch

    arch = Arch.from_hf_config(_json.loads((ensure_demo_model() / "config.json").read_text()))
    cards = {} if strategy == "single" else {"strategy": strategy, "gpus": gpus}
    if stage == "grpo":
        return Point(SMOKE_MODEL, "lora", 64 + 32, 4, stage="grpo", prompt_len=64, completion_len=32,
                     num_generations=4, kl_beta=0.04, **cards), arch
    return Point(SMOKE_MODEL, "lora", 128, 2, stage=stage, **cards), arch


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=None, help=f"JSON lines file to append to (default {DEFAULT_OUT}; "
                                                          "with --smoke, <work>/vram_smoke.jsonl).")
    p.add_argument("--work", type=Path, default=DEFAULT_WORK, help="Scratch folder for shapes, mixes and runs.")
    p.add_argument("--quick", action="store_true", help="Only the first round: every model x method once.")
    p.add_argument("--extended", action="store_true", help="A third round of points, for a tighter fit.")
    p.add_argument("--wide", action="store_true",
                   help="Long rows (8k-32k tokens), ranks 64 / 128 and transformers + PEFT points, about "
                        "a third held out of the fit.")
    p.add_argument("--smoke", action="store_true", help="CPU plumbing check: a demo-sized shape, one point.")
    p.add_argument("--strategy", default="", choices=["", *MULTI_POINTS],
                   help="Measure per-card peaks on several GPUs (ddp or fsdp) instead; --gpus cards each.")
    p.add_argument("--gpus", type=int, default=2, help="With --strategy: how many cards (default 2).")
    p.add_argument("--stage", default="", choices=["", *STAGE_NAMES, "all"],
                   help="Measure the stages beyond sft instead (dpo, orpo, grpo or all): their memory terms "
                        "in the estimator. With --smoke: one demo-sized point of that stage.")
    p.add_argument("--models", default="", help="Comma-separated catalog keys to keep (default: all in the grid).")
    p.add_argument("--backends", default="auto", help="Comma-separated backends to request (auto, unsloth, peft).")
    p.add_argument("--no-peft-extra", action="store_true", help="Skip the few transformers + PEFT points.")
    p.add_argument("--time-budget", type=float, default=540.0,
                   help="Start no new point after this many seconds (the sweep resumes next time).")
    p.add_argument("--point-timeout", type=float, default=420.0, help="Give up on one point after this many s.")
    p.add_argument("--keep-runs", action="store_true", help="Keep the run folders of successful points.")
    p.add_argument("--lanes", type=int, default=1,
                   help="Train up to this many points at once on the one card, as the estimate says they "
                        "fit (their peaks are per process: torch's and NVML's count of the process).")
    p.add_argument("--leave-gib", type=float, default=0.0,
                   help="With --lanes: card memory to leave to other work running beside the sweep.")
    p.add_argument("--dry-run", action="store_true", help="List the points still to measure and exit.")
    args = p.parse_args(argv)

    t_start = time.perf_counter()
    work = args.work.expanduser()
    work.mkdir(parents=True, exist_ok=True)
    arches = {}
    stages = STAGE_NAMES if args.stage == "all" else (args.stage,) if args.stage else ()
    if args.gpus < 2 and args.strategy:
        p.error("--gpus must be 2 or more with --strategy")
    cpu_ranks = 0
    if args.smoke:
        point, arch = smoke_point(stages[0] if stages else "sft", args.strategy or "single", args.gpus)
        points, arches[point.model] = [point], arch
        out = args.out or work / "vram_smoke.jsonl"
        cpu_ranks = args.gpus if args.strategy else 0
    elif args.strategy:
        points = multi_grid(args.strategy, args.gpus)
        if args.models:
            keep = {m.strip() for m in args.models.split(",")}
            points = [pt for pt in points if pt.model in keep]
        out = args.out or DEFAULT_OUT
    elif stages:
        points = stage_grid(stages) + (wide_grid() if args.wide else [])  # one sweep can fill both
        if args.models:
            keep = {m.strip() for m in args.models.split(",")}
            points = [pt for pt in points if pt.model in keep]
        out = args.out or DEFAULT_OUT
    else:
        backends = tuple(b.strip() for b in args.backends.split(",") if b.strip())
        level = "wide" if args.wide else "quick" if args.quick else "extended" if args.extended else "default"
        points = grid(level, backends, peft_extra=not args.no_peft_extra)
        if args.models:
            keep = {m.strip() for m in args.models.split(",")}
            points = [pt for pt in points if pt.model in keep]
        out = args.out or DEFAULT_OUT
    card = card_name()
    done = done_keys(out)
    todo = [pt for pt in points if pt.key(card) not in done]
    print(f"card: {card}; {len(points) - len(todo)} of {len(points)} points already in {out}; "
          f"{len(todo)} to go", flush=True)
    if args.dry_run:
        for pt in todo:
            print("  " + pt.name)
        return 0
    meta = {"card": card, "versions": versions()}
    if args.lanes > 1 and card != "cpu":
        return run_lanes(todo, args, work, out, meta, arches, t_start)
    slowest = 0.0
    measured = 0
    for n, pt in enumerate(todo, 1):
        elapsed = time.perf_counter() - t_start
        if elapsed + max(slowest, 30.0) > args.time_budget:
            print(f"time budget reached after {elapsed:.0f}s: {len(todo) - n + 1} points left; run again to "
                  "continue", flush=True)
            break
        print(f"[{n}/{len(todo)}] {pt.name} ...", flush=True)
        line = run_point(pt, work, args.point_timeout, args.keep_runs, arches.get(pt.model),
                         cpu_ranks=cpu_ranks if card == "cpu" else 0)
        line = {**meta, **line, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
        append_line(out, line)
        slowest = max(slowest, line["wall_s"])
        measured += 1
        peak = line["peak_alloc_gib"]
        print(f"    {line['status']}: backend {line['backend']}, peak alloc "
              f"{peak if peak is not None else '-'} GiB, NVML {line['nvml_used_gib'] or '-'} GiB, "
              f"{line['wall_s']}s" + (f"; {line.get('error', '')[:300]}" if line["status"] != "ok" else ""),
              flush=True)
    print(f"measured {measured} point(s) in {time.perf_counter() - t_start:.0f}s -> {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
