"""The offline demo model: a tiny random Qwen3 with a locally trained tokenizer and our chat template.

Tests, CI and the GUI's demo mode use it, because no model hub is reachable there. It is built
deterministically (fixed seed, fixed corpus) in a few seconds, then cached: the cache folder's name
carries a hash of everything that goes into it, so a change to the recipe builds a fresh one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from core.models.paths import DEMO_MARKER

ASSETS = Path(__file__).parent / "assets"
TEMPLATE_PATH = ASSETS / "qwen3_chat_template.jinja"
CORPUS_PATH = ASSETS / "demo_corpus.txt"
DEMO_NAME = "demo"
RECIPE_VERSION = "2"

# Qwen3's special tokens, in Qwen3's order; the "special" flag matches Qwen3's tokenizer.json.
SPECIAL_TOKENS = [
    ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True),
    ("<tool_call>", False), ("</tool_call>", False),
    ("<tool_response>", False), ("</tool_response>", False),
    ("<think>", False), ("</think>", False),
]
# Qwen2/3's pre-tokenizer split pattern, so the demo tokenizer splits text the way Qwen3's does.
SPLIT_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")

ARCH = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16}
VOCAB_SIZE = 1024
SEED = 1234


def chat_template() -> str:
    return TEMPLATE_PATH.read_text(encoding="utf-8")


def default_cache_root() -> Path:
    from core.models.paths import cache_root

    return cache_root()


def _corpus_texts() -> list[str]:
    """The text the tokenizer learns from: the shipped corpus plus the shipped sample datasets."""
    texts = CORPUS_PATH.read_text(encoding="utf-8").splitlines()
    samples = Path(__file__).resolve().parent.parent / "presets" / "samples"
    for path in sorted(samples.glob("*.jsonl")) if samples.is_dir() else []:
        texts.extend(path.read_text(encoding="utf-8").splitlines())
    return [t for t in texts if t.strip()]


def recipe_hash() -> str:
    h = hashlib.sha256()
    h.update(RECIPE_VERSION.encode())
    h.update(json.dumps([ARCH, VOCAB_SIZE, SEED, SPECIAL_TOKENS, SPLIT_PATTERN]).encode())
    h.update(chat_template().encode())
    for text in _corpus_texts():
        h.update(text.encode())
    return h.hexdigest()[:12]


def build_tokenizer(out_dir: Path):
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, use_regex=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE - len(SPECIAL_TOKENS),
        min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus_texts(), trainer=trainer)
    from tokenizers import AddedToken

    tok.add_special_tokens([AddedToken(t, special=s, normalized=False) for t, s in SPECIAL_TOKENS])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        clean_up_tokenization_spaces=False,
        model_max_length=32768,
    )
    fast.chat_template = chat_template()
    fast.save_pretrained(out_dir)
    return fast


def build_model(out_dir: Path, tokenizer) -> None:
    import torch
    from transformers import GenerationConfig, Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(
        vocab_size=len(tokenizer),
        max_position_embeddings=32768,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.pad_token_id,
        rope_theta=1000000.0,
        # With 64 hidden units and tied embeddings, the usual 0.02 init caps every logit near 1.3, so
        # LoRA (which cannot rescale the embeddings) could never make the demo model confident and
        # its loss would stall near 5.7. At 0.2 a memorisation run falls below 0.1.
        initializer_range=0.2,
        torch_dtype="float32",
        **ARCH,
    )
    torch.manual_seed(SEED)
    model = Qwen3ForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=[config.eos_token_id, config.bos_token_id],
        pad_token_id=config.pad_token_id,
        do_sample=True, temperature=0.6, top_p=0.95, top_k=20,
    )
    model.save_pretrained(out_dir, safe_serialization=True)


def build_demo_model(out_dir: str | os.PathLike) -> Path:
    """Build the demo model into ``out_dir`` (created; must be empty or absent)."""
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; choose an empty or new folder")
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(out)
    build_model(out, tokenizer)
    (out / DEMO_MARKER).write_text(
        json.dumps({"recipe": recipe_hash(), "note": "Random weights; for tests and demo mode."}) + "\n",
        encoding="utf-8",
    )
    return out


def ensure_demo_model(cache_root: str | os.PathLike | None = None) -> Path:
    """Return the cached demo model folder, building it once (safe against concurrent builders)."""
    root = Path(cache_root) if cache_root else default_cache_root()
    target = root / f"demo-model-{recipe_hash()}"
    if (target / DEMO_MARKER).exists():
        return target
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".demo-build-", dir=root))
    try:
        build_demo_model(tmp / "m")
        try:
            os.replace(tmp / "m", target)
        except OSError:
            if not (target / DEMO_MARKER).exists():
                raise  # another process did not win the race: a real failure
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def is_demo(name_or_path: str) -> bool:
    return name_or_path.strip().lower() == DEMO_NAME
