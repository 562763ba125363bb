"""The saved mix folder: what the Data tab and `python -m core mix` write and the trainer reads.

    <mix>/manifest.json   kind (sft | preference | prompt; absent = sft), sources (path or id, hash
                          or revision), ratios, seed, counts, drops, tokenizer, max length, eval
                          split size
    <mix>/train.jsonl     one row per line: {"conversation": {...}, "text": ..., "n_tokens": N,
                          "source": name}
    <mix>/train.parquet   the same rows (conversation stored as JSON text)
    <mix>/eval.jsonl      held-out rows, same shape (present when eval_fraction > 0)
    <mix>/eval.parquet
The trainer re-renders conversations with its own model's tokenizer; ``text`` is for people.
"""

from __future__ import annotations

import json
from pathlib import Path

from core.data.conversation import Conversation
from core.settings import ConfigError, DamagedFile, read_json, write_json_atomic

MANIFEST = "manifest.json"


def _dumps(value) -> bytes:
    """Compact UTF-8 JSON. orjson is ~5x faster than json on 100k-row mixes; json stays the fallback
    for what orjson refuses (integers beyond 64 bits, non-string keys)."""
    import orjson

    try:
        return orjson.dumps(value)
    except TypeError:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def write_rows(path: Path, rows: list[dict]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    tmp = path.with_suffix(".jsonl.tmp")
    conversations = []
    with tmp.open("wb") as f:
        for row in rows:
            # The conversation is serialised once and reused for the Parquet column.
            conv = _dumps(row.get("conversation"))
            conversations.append(conv)
            rest = {k: v for k, v in row.items() if k != "conversation"}
            tail = b"," + _dumps(rest)[1:] if rest else b"}"
            f.write(b'{"conversation":' + conv + tail + b"\n")
    tmp.replace(path.with_suffix(".jsonl"))
    table = pa.table({
        "conversation": pa.array(conversations, type=pa.binary()).cast(pa.string()),
        "text": [r.get("text", "") for r in rows],
        "n_tokens": [int(r.get("n_tokens", 0)) for r in rows],
        "source": [r.get("source", "") for r in rows],
    })
    pq.write_table(table, path.with_suffix(".parquet"))


def write_mix_dir(out: str | Path, train_rows: list[dict], eval_rows: list[dict], manifest: dict) -> Path:
    """Write a mix folder. Rows are dicts with 'conversation' (Conversation.to_json()), 'text',
    'n_tokens', 'source'. The manifest is written last, so a folder with a manifest is complete."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_rows(out / "train.jsonl", train_rows)
    if eval_rows:
        write_rows(out / "eval.jsonl", eval_rows)
    manifest = dict(manifest, train_rows=len(train_rows), eval_rows=len(eval_rows))
    write_json_atomic(out / MANIFEST, manifest)
    return out


def _read_rows(path: Path) -> list[Conversation]:
    convs = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                convs.append(Conversation.from_json(json.loads(line)["conversation"]))
            except (ValueError, KeyError, TypeError) as exc:
                raise ConfigError(f"broken row ({exc})", "", f"{path}:{lineno}") from None
    return convs


def read_manifest(mix_dir: str | Path) -> dict:
    """The mix folder's manifest. A missing or damaged one is a :class:`ConfigError` of
    ``data.mix_dir`` naming the file, which is what every caller (Train, Data, the worker) reports."""
    path = Path(mix_dir) / MANIFEST
    try:
        manifest = read_json(path, expect=dict)
    except DamagedFile as exc:
        raise ConfigError(f"{exc.message}; build the mix again in the Data tab or with `python -m core mix`",
                          "data.mix_dir", str(path)) from None
    if manifest is None:
        raise ConfigError(f"not a saved mix folder (no {MANIFEST}); build one in the Data tab or with "
                          "`python -m core mix`", "data.mix_dir", str(mix_dir))
    return manifest


def mix_kind(manifest: dict) -> str:
    """What the mix's rows are for (core.choices.MIX_KINDS); a manifest without "kind" is an SFT mix."""
    from core.choices import MIX_KINDS

    kind = manifest.get("kind") or "sft"
    if kind not in MIX_KINDS:
        raise ConfigError(f"unknown mix kind {kind!r} in {MANIFEST} (expected one of {', '.join(MIX_KINDS)})",
                          "data.mix_dir")
    return kind


def read_mix_dir(mix_dir: str | Path) -> tuple[list[Conversation], list[Conversation], dict]:
    """(train conversations, eval conversations, manifest) of a saved mix folder. Preference rows
    come back with ``rejected`` set, prompt rows with their ``meta["expected_answer"]``; the
    manifest's "kind" (see :func:`mix_kind`) says which the folder holds."""
    mix_dir = Path(mix_dir)
    manifest = read_manifest(mix_dir)
    train = _read_rows(mix_dir / "train.jsonl")
    eval_path = mix_dir / "eval.jsonl"
    evals = _read_rows(eval_path) if eval_path.exists() else []
    return train, evals, manifest
