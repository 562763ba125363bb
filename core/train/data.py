"""The run's data: the mix (saved folder or inline, built into the run folder) -> token ids + THE mask.

Tokenization and the loss mask come from core.data.render (the same code the Data tab previews),
and TRL's SFTTrainer receives a pre-tokenized dataset: ``input_ids`` + ``assistant_masks``, which
TRL 1.14 turns into ``labels`` (-100 where the mask is 0) before padding-free batching or packing.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from core.data.render import MaskOptions, render_batch
from core.settings import ConfigError

CHUNK = 2000  # rows per tokenizer call: bounded memory, still batched in the fast tokenizer


@dataclass
class Tokenized:
    input_ids: list[list[int]] = field(default_factory=list)
    masks: list[list[int]] = field(default_factory=list)
    rows_in: int = 0
    too_long: int = 0
    no_target: int = 0

    @property
    def rows(self) -> int:
        return len(self.input_ids)

    @property
    def tokens(self) -> int:
        return sum(len(x) for x in self.input_ids)

    @property
    def trained_tokens(self) -> int:
        return sum(sum(m) for m in self.masks)

    def columns(self) -> dict:
        return {"input_ids": self.input_ids, "assistant_masks": self.masks}

    def summary(self) -> dict:
        return {"rows": self.rows, "rows_in": self.rows_in, "dropped_too_long": self.too_long,
                "dropped_no_target": self.no_target, "tokens": self.tokens,
                "trained_tokens": self.trained_tokens}


def tokenize(convs, tokenizer, train_cfg) -> Tokenized:
    """Render + tokenize + mask. Rows longer than max_seq_len are dropped (never truncated here:
    a cut reasoning trace teaches the model to stop mid-thought); rows with nothing to train too."""
    options = MaskOptions(assistant_only=train_cfg.assistant_only_loss,
                          train_empty_think=train_cfg.train_empty_think)
    out = Tokenized(rows_in=len(convs))
    for start in range(0, len(convs), CHUNK):
        for r in render_batch(convs[start:start + CHUNK], tokenizer, options=options):
            if r.n_tokens > train_cfg.max_seq_len:
                out.too_long += 1
            elif r.n_trained == 0:
                out.no_target += 1
            else:
                out.input_ids.append(r.input_ids)
                out.masks.append(r.mask)
    return out


def load_mix(cfg, run_dir: Path, tokenizer_path: Path, resume: bool, echo=print):
    """(train conversations, eval conversations, manifest, mix folder) for the run.

    ``data.mix_dir`` is read as saved. An inline ``data.mix`` is built into ``<run>/mix`` with
    core.data.mix.build_mix (once: a resumed run reuses it, so it trains on the same rows)."""
    from core.data.mixdir import MANIFEST, read_mix_dir

    if cfg.data.mix_dir:
        mix_dir = Path(cfg.data.mix_dir).expanduser()
        if not mix_dir.is_dir():
            raise ConfigError(f"mix folder {mix_dir} does not exist", "data.mix_dir")
    else:
        mix_dir = run_dir / "mix"
        if not (resume and (mix_dir / MANIFEST).is_file()):
            from core.data.mix import build_mix

            if mix_dir.exists():
                shutil.rmtree(mix_dir)
            echo(f"building the inline mix into {mix_dir}")
            try:
                result = build_mix(cfg.data.mix, str(tokenizer_path), mix_dir, overwrite=True)
            except ConfigError as exc:
                if exc.where.startswith("data."):
                    raise
                where = "data.mix" + (f".{exc.where}" if exc.where else "")
                raise ConfigError(exc.reason, where, exc.source) from None
            echo(f"mix built: {len(result.rows)} train rows, {len(result.eval_rows)} eval rows, "
                 f"per source {result.counts}")
            for warning in result.warnings:
                echo("mix warning: " + warning)
    train, evals, manifest = read_mix_dir(mix_dir)
    if not train:
        raise ConfigError(f"the mix in {mix_dir} has no training rows",
                          "data.mix_dir" if cfg.data.mix_dir else "data.mix")
    return train, evals, manifest, mix_dir


# A padded micro-batch whose real tokens fill at least this share of micro_batch x max_seq_len
# gains nothing from packing, and padded batches run Unsloth's compiled transformer blocks.
FULL_FILL = 0.85


def padded_fill(lengths: list[int], micro_batch: int, max_seq_len: int, seed: int = 0,
                samples: int = 512) -> float:
    """Expected real tokens of a shuffled padded micro-batch over micro_batch x max_seq_len."""
    import random

    if not lengths:
        return 0.0
    rng = random.Random(seed)
    real = 0
    for _ in range(samples):
        real += sum(lengths[rng.randrange(len(lengths))] for _ in range(micro_batch))
    return real / samples / (micro_batch * max_seq_len)


def choose_packing(requested: str, lengths: list[int], micro_batch: int, max_seq_len: int) -> tuple[str, str]:
    """The batching mode for ``train.packing`` = requested, and why (shown in the log and status).

    Measured on an H200 with a Qwen3-8B shape (bench/results/train_speed.jsonl, the records with call
    7 and 8; torch 2.11 without flash-attn): on short chat + long reasoning rows, bucket trained
    1.99x / 2.00x the real tokens/s of padded batches and packing 1.86x / 1.92x (packed segments get
    one attention call each without a variable-length kernel); on rows that all fill the sequence,
    padded batches ran at par with the bare Unsloth loop, as there is nothing to remove."""
    from core.train.notices import Notice

    if requested != "auto":
        return requested, Notice("packing_fixed", mode=requested)
    fill = padded_fill(lengths, micro_batch, max_seq_len)
    if fill >= FULL_FILL:
        return "off", Notice("packing_off_full", fill=f"{fill:.0%}")
    return "bucket", Notice("packing_on_sparse", fill=f"{fill:.0%}")
