"""The worker's notes about how it trains (backend, batching, QLoRA, checkpointing), with stable codes.

A :class:`Notice` is the English sentence (what the log and the CLI print, and what status.json's
``notices`` / ``packing_reason`` hold, so older readers keep working) that also carries a ``code``
and its ``params``.
The worker writes the codes beside the text (``notice_codes``, ``packing_code`` in status.json) so
the GUI can show each note in the page's language (``train.notice.<code>`` in gui/strings/train.yaml,
same placeholders as :data:`TEXT`).
"""

from __future__ import annotations

TEXT = {
    "backend_peft_no_cuda": "backend: transformers + PEFT (no CUDA GPU)",
    "backend_peft_no_unsloth": "backend: transformers + PEFT (unsloth is not installed "
                               "(pip install -r requirements-gpu.txt))",
    "backend_unsloth": "backend: Unsloth {version}",
    "unsloth_failed": "Unsloth failed to import ({error}); using transformers + PEFT",
    "qlora_prequantized": "QLoRA: pre-quantized 4-bit checkpoint",
    "qlora_nf4_on_load": "QLoRA: 16-bit weights quantized to nf4 on load",
    "qlora_nf4_bnb": "QLoRA: 16-bit weights quantized to nf4 on load (bitsandbytes)",
    "qlora_cpu_fallback": "QLoRA needs a CUDA GPU (bitsandbytes 4-bit); training 16-bit LoRA on the CPU instead",
    "gc_standard_recompute": "gradient checkpointing: offloading is Unsloth's; using standard recompute",
    "packing_fixed": "train.packing = {mode}",
    "packing_off_full": "auto: rows fill {fill} of each micro-batch, padded batches (nothing to pack)",
    "packing_on_sparse": "auto: rows fill only {fill} of a micro-batch, batching rows of similar "
                         "length together (bucket)",
    "mix_remeasured": "the mix was measured with {mix_tokenizer}, this model uses {model_tokenizer}: every row "
                      "was re-measured with the model's tokenizer; {too_long} of {rows} train rows are now longer "
                      "than train.max_seq_len={max_len} and left out",
    "mix_unrecorded_tokenizer": "the mix does not record the tokenizer it was measured with: every row was "
                                "re-measured with the model's ({model_tokenizer}); {too_long} of {rows} train "
                                "rows are longer than train.max_seq_len={max_len} and left out",
    "packing_stage": "train.stage {stage}: padded batches (TRL's {stage} trainer batches its own rows; "
                     "train.packing applies to sft)",
    "packing_no_varlen": "packed rows without a variable-length attention kernel (torch {torch}, no flash-attn "
                         "or xformers): each packed segment gets its own attention call, which costs speed; "
                         "torch 2.12+ or flash-attn avoids it, and train.packing = bucket has no segments",
}


class Notice(str):
    """``Notice("backend_unsloth", version="2025.9")`` == "backend: Unsloth 2025.9", with .code/.params."""

    code: str
    params: dict

    def __new__(cls, code: str, **params):
        text = TEXT[code].format(**params).rstrip()
        obj = super().__new__(cls, text)
        obj.code = code
        obj.params = {k: str(v) for k, v in params.items()}
        return obj

    def to_json(self) -> dict:
        return {"code": self.code, "params": self.params}


def codes_of(notes) -> list[dict | None]:
    """status.json's ``notice_codes``: one entry per note, None for a note without a code."""
    return [n.to_json() if isinstance(n, Notice) else None for n in notes]
