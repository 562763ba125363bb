"""Load the tokenizer that measures and renders a mix: "demo", a local model folder, or a hub id."""

from __future__ import annotations

import hashlib
from pathlib import Path

from core.data.sources import DataError


def load_tokenizer(spec: str | None = "demo"):
    """"demo" (or empty) -> the offline demo model's tokenizer (Qwen3's template); a folder or hub id
    -> ``AutoTokenizer.from_pretrained``. A tokenizer without a chat template is refused."""
    from transformers import AutoTokenizer

    spec = (spec or "demo").strip()
    if spec.lower() == "demo":
        from core.demo import ensure_demo_model

        path = ensure_demo_model()
    else:
        path = Path(spec).expanduser()
        if not path.exists():
            path = spec  # a hub id; offline this fails below with the id in the message
    try:
        tok = AutoTokenizer.from_pretrained(str(path))
    except Exception as exc:  # transformers raises OSError/ValueError/HTTP errors for a bad spec
        raise DataError(f"cannot load a tokenizer from {spec!r}: {type(exc).__name__}: {exc}. Use 'demo', "
                        "a local model folder, or a hub id on a connected machine.", "tokenizer") from None
    if not tok.chat_template:
        raise DataError(f"the tokenizer {spec!r} has no chat template; use a Qwen3 model's tokenizer",
                        "tokenizer")
    tok.qwentune_spec = spec  # the name the user gave, recorded in the manifest
    return tok


def tokenizer_info(tokenizer) -> dict:
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else str(tokenizer.chat_template)
    return {
        "spec": getattr(tokenizer, "qwentune_spec", "") or tokenizer.name_or_path,
        "name_or_path": str(tokenizer.name_or_path),
        "class": type(tokenizer).__name__,
        "vocab_size": len(tokenizer),
        "chat_template_sha256": hashlib.sha256(template.encode("utf-8")).hexdigest(),
    }
