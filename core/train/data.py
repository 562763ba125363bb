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


def tokenize_run(cfg, convs, tokenizer):
    """The run's rows for its stage: SFT's token ids + mask (:func:`tokenize`), or the preference /
    prompt rows of dpo, orpo and grpo (core.train.stages.tokenize)."""
    if cfg.train.stage == "sft":
        return tokenize(convs, tokenizer, cfg.train)
    from core.train.stages import tokenize as stage_tokenize

    return stage_tokenize(cfg, convs, tokenizer)


# Drop reasons (manifest.json's per-source ``drops``) that come from token counts: rows a mix
# dropped for these were judged by the mix's tokenizer, and the mix folder no longer holds them.
LENGTH_REASON_WORDS = ("tokens", "max_seq_len")


def length_decisions(manifest: dict) -> dict[str, int]:
    """How many rows the mix dropped or cut because of their token counts, per reason."""
    out: dict[str, int] = {}
    for source in manifest.get("sources") or []:
        if not isinstance(source, dict):
            continue
        for reason, drop in (source.get("drops") or {}).items():
            count = drop.get("count", 0) if isinstance(drop, dict) else 0
            if count and any(word in reason for word in LENGTH_REASON_WORDS):
                out[reason] = out.get(reason, 0) + int(count)
        if source.get("truncated"):
            out["truncated to max_seq_len"] = out.get("truncated to max_seq_len", 0) + int(source["truncated"])
    return out


def check_mix_tokenizer(manifest: dict, model_info: dict, mix_dir: Path, model_name: str) -> str:
    """Compare the tokenizer a saved mix was measured with to the model's, before training.

    Returns "same", "remeasure" (the trainer counts every row again with the model's tokenizer: the
    mix made no decision by token count, or recorded no tokenizer) or raises ConfigError when the
    mix dropped or cut rows by another tokenizer's counts: rows it dropped are not in the folder,
    so re-measuring cannot bring back the ones that fit; the message says how to rebuild it."""
    from core.data.tokenizer import describe, same_tokenizer, tokenizer_for_model

    recorded = manifest.get("tokenizer") if isinstance(manifest.get("tokenizer"), dict) else None
    if recorded and same_tokenizer(recorded, model_info):
        return "same"
    decided = length_decisions(manifest)
    if not recorded or not decided:
        return "remeasure"
    spec = tokenizer_for_model(model_name)
    reasons = ", ".join(f"{reason} x{count:,}" for reason, count in decided.items())
    raise ConfigError(
        f"the mix in {mix_dir} was measured with {describe(recorded)}, but {model_name} uses "
        f"{describe(model_info)}; the mix dropped or cut rows by those token counts ({reasons}), and "
        f"the mix folder cannot tell which of them fit this model. Rebuild the mix with the model's "
        f"tokenizer: in the Data tab with this model selected, or `python -m core mix MIX.yaml --tokenizer "
        f"{spec} --out {mix_dir} --force` (the mix's settings are under 'config' in "
        f"{mix_dir / 'manifest.json'})", "data.mix_dir")


def mix_tokenizer_notice(manifest: dict, tokenizer, train_tok: Tokenized, max_len: int):
    """The status notice for a mix re-measured with the model's tokenizer, or None when the mix
    was measured with the same tokenizer."""
    from core.data.tokenizer import describe, same_tokenizer, tokenizer_info
    from core.train.notices import Notice

    info = tokenizer_info(tokenizer)
    recorded = manifest.get("tokenizer") if isinstance(manifest.get("tokenizer"), dict) else None
    if recorded and same_tokenizer(recorded, info):
        return None
    params = {"model_tokenizer": describe(info), "too_long": train_tok.too_long, "rows": train_tok.rows_in,
              "max_len": max_len}
    if not recorded:
        return Notice("mix_unrecorded_tokenizer", **params)
    return Notice("mix_remeasured", mix_tokenizer=describe(recorded), **params)


def load_mix(cfg, run_dir: Path, tokenizer_path: Path, resume: bool, echo=print):
    """(train conversations, eval conversations, manifest, mix folder) for the run.

    ``data.mix_dir`` is read as saved, after :func:`check_mix_tokenizer` compared the tokenizer it
    was measured with to the model's (``tokenizer_path``). An inline ``data.mix`` is built into
    ``<run>/mix`` with core.data.mix.build_mix and the model's tokenizer (once: a resumed run reuses
    it, so it trains on the same rows)."""
    from core.data.mixdir import MANIFEST, read_manifest, read_mix_dir

    if cfg.data.mix_dir:
        mix_dir = Path(cfg.data.mix_dir).expanduser()
        if not mix_dir.is_dir():
            raise ConfigError(f"mix folder {mix_dir} does not exist", "data.mix_dir")
        from core.data.tokenizer import describe, load_tokenizer, tokenizer_info

        try:
            model_info = tokenizer_info(load_tokenizer(str(tokenizer_path)))
        except ConfigError as exc:  # the model's tokenizer is the model's problem, not a mix setting
            raise ConfigError(exc.reason, "model.name_or_path") from None
        manifest = read_manifest(mix_dir)
        if check_mix_tokenizer(manifest, model_info, mix_dir, cfg.model.name_or_path) == "remeasure":
            echo(f"the mix was measured with {describe(manifest.get('tokenizer'))}; the model uses "
                 f"{describe(model_info)}: every row is re-measured with the model's tokenizer")
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
    from core.data.mixdir import mix_kind
    from core.train.validate import stage_problems

    problems = [p for p in stage_problems(cfg, kind=mix_kind(manifest)) if p.level == "error"]
    if problems:  # e.g. a dpo run on an sft mix: its rows cannot train the stage
        raise ConfigError(problems[0].message, problems[0].setting)
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
