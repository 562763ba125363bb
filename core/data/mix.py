"""Mix several sources by ratio (or count) into one seeded, reproducible training set.

Arithmetic (see docs/data.md):

* Ratios are normalised over the sources that have one (75 and 25 are the same as 0.75 and 0.25).
  Sources with ``count`` get exactly that many rows; the ratio sources share the rest.
* Default (``upsample: false``): no row is repeated. The mix shrinks to fit the scarcest source
  relative to its ratio: pool = min(available_i / share_i), rows_i = floor(pool * share_i).
  Example: 19,252 reasoning rows at 75% + 100,000 chat rows at 25% -> pool 25,669.33 -> 19,252
  reasoning + floor(6,417.33) = 6,417 chat rows.
* ``upsample: true``: rows of scarce sources repeat to reach their ratio. The pool is ``total``
  (minus counts) when set, else the size at which the largest source is used exactly once.
* ``total`` > 0 is a target: met exactly when the data allows (largest-remainder rounding), else the
  mix shrinks and a warning says which source limits it.

Everything random comes from ``seed``: the same config and data give a byte-identical mix folder.
"""

from __future__ import annotations

import dataclasses
import gc
import math
import random
import re
import shutil
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

from core.config import MixConfig, SourceConfig
from core.data.conversation import Conversation
from core.data.formats import KIND_ROWS, KindError, RowError, check_columns, to_conversation
from core.data.render import (
    MaskError,
    apply_reasoning_turns,
    count_tokens,
    dropped_reasoning,
    render_preference,
    render_prompt,
    render_texts,
    reply_spans,
)
from core.data.sources import DataError, Skip, local_files, open_source, sample_path, source_kind
from core.data.stats import TRUNCATION_WARNING, length_stats
from core.data.tokenizer import load_tokenizer, tokenizer_info
from core.settings import ConfigError, to_dict

__all__ = ["build_mix", "MixResult", "SourceReport", "SourceCache", "plan_counts", "load_tokenizer",
           "save_mix", "check_mix_name"]

Progress = Callable[[float, str], None]
EXAMPLES_PER_REASON = 5
EXPLAIN_UNDETECTED = 1000  # rows of unknown format kept to be explained by the source's format
CHUNK = 2000
MANIFEST_VERSION = 1


# ------------------------------------------------------------------------------------- results
@dataclass
class LoadedSource:
    """A source read, converted and measured: the expensive part, cached between rebuilds."""

    name: str
    location: object  # SourceLocation
    conversations: list[Conversation]
    texts: list[str]
    lengths: list[int]
    formats: Counter
    rows_read: int
    skips: list[Skip]
    notices: list[Skip] = field(default_factory=list)  # problems of rows that were kept
    reasoning: dict = field(default_factory=dict)  # rows / replies whose earlier reasoning the template drops
    kind: str = "sft"  # what the rows are for (core.choices.MIX_KINDS)
    # What tells two rows apart for duplicates, where the text does not (a preference row's text is
    # its chosen conversation; the same prompt and chosen reply with another rejected one is a new pair).
    keys: list[str] | None = None


@dataclass
class SourceReport:
    name: str
    config: dict
    location: dict
    formats: dict
    rows_read: int = 0
    parsed: int = 0  # rows converted to conversations
    usable: int = 0  # after the length filters
    used: int = 0  # rows in the mix (train + eval), repeats included
    repeated: int = 0  # of ``used``, how many are repeats
    truncated: int = 0  # of ``used``, how many are over max_seq_len (truncate policy)
    share: float | None = None  # normalised ratio
    drops: dict = field(default_factory=dict)  # reason -> {"count", "examples"}
    notices: dict = field(default_factory=dict)  # kept rows with a problem: reason -> {"count", "examples"}
    reasoning: dict = field(default_factory=dict)  # {"mode", "rows", "replies", "extra_rows"}
    lengths: list[int] = field(default_factory=list)  # token count of every parsed row
    length_stats: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def dropped(self) -> int:
        return sum(d["count"] for d in self.drops.values())

    def summary(self) -> dict:
        return {"name": self.name, "source": self.location, "formats": self.formats,
                "ratio": self.config.get("ratio"), "share": self.share, "count": self.config.get("count"),
                "rows_read": self.rows_read, "parsed": self.parsed, "usable": self.usable, "used": self.used,
                "repeated": self.repeated, "truncated": self.truncated, "dropped": self.dropped,
                "drops": self.drops, "notices": self.notices, "reasoning_turns": self.reasoning,
                "lengths": self.length_stats}


@dataclass
class MixResult:
    config: MixConfig
    sources: list[SourceReport]
    train: list[Conversation]
    eval: list[Conversation]
    rows: list[dict]  # train rows in the mix-folder shape (see core.data.mixdir)
    eval_rows: list[dict]
    tokenizer: dict
    warnings: list[str] = field(default_factory=list)
    out_dir: Path | None = None
    kind: str = "sft"

    @property
    def counts(self) -> dict[str, int]:
        return {s.name: s.used for s in self.sources}

    @property
    def drops(self) -> dict[str, dict]:
        return {s.name: s.drops for s in self.sources}

    @property
    def total(self) -> int:
        return len(self.rows) + len(self.eval_rows)

    def table_rows(self) -> list[dict]:
        """One summary row per source, for tables in the GUI and the CLI."""
        rows = []
        for s in self.sources:
            ls = s.length_stats
            rows.append({"source": s.name, "formats": ", ".join(f"{k} {v}" for k, v in s.formats.items()),
                         "read": s.rows_read, "usable": s.usable, "dropped": s.dropped,
                         "share": f"{s.share:.0%}" if s.share is not None else "",
                         "used": s.used, "repeated": s.repeated, "p50": ls.get("p50", 0), "p95": ls.get("p95", 0),
                         "max": ls.get("max", 0), "over_max": ls.get("over_max", 0)})
        return rows

    def mix_length_stats(self) -> dict:
        return length_stats([r["n_tokens"] for r in self.rows + self.eval_rows], self.config.max_seq_len)

    def manifest(self) -> dict:
        from core.data.report import problem_rows

        return {
            "format": "qwentune-mix", "version": MANIFEST_VERSION, "kind": self.kind,
            "sources": [dict(s.summary(), config=s.config) for s in self.sources],
            "seed": self.config.seed, "upsample": self.config.upsample, "total_target": self.config.total,
            "shuffle": self.config.shuffle, "eval_fraction": self.config.eval_fraction,
            "reasoning_turns": self.config.reasoning_turns, "dedupe": self.config.dedupe,
            "max_seq_len": self.config.max_seq_len, "overlong": self.config.overlong,
            "tokenizer": self.tokenizer,
            "counts": self.counts, "drops": self.drops, "problems": problem_rows(self), "total": self.total,
            "lengths": self.mix_length_stats(), "warnings": self.warnings,
            "config": to_dict(self.config),
        }

    def summary(self) -> dict:
        """What `python -m core mix --json` prints."""
        from core.data.report import problem_rows

        return {"out": str(self.out_dir) if self.out_dir else None, "kind": self.kind, "total": self.total,
                "train_rows": len(self.rows), "eval_rows": len(self.eval_rows), "counts": self.counts,
                "drops": self.drops, "problems": problem_rows(self),
                "sources": [s.summary() for s in self.sources],
                "lengths": self.mix_length_stats(), "tokenizer": self.tokenizer, "warnings": self.warnings}


# ---------------------------------------------------------------------------------- arithmetic
def _fraction(x: float) -> Fraction:
    return Fraction(repr(float(x)))


def plan_counts(ratios: list[float | None], counts: list[int | None], available: list[int], *,
                upsample: bool = False, total: int = 0, names: list[str] | None = None
                ) -> tuple[list[int], list[str]]:
    """Rows to take from each source, and warnings. See the module docstring for the rules."""
    n = len(available)
    names = names or [f"source {i}" for i in range(n)]
    warnings: list[str] = []
    out = [0] * n
    ratio_idx = [i for i in range(n) if ratios[i] is not None]
    for i in range(n):
        if counts[i] is not None:
            want = int(counts[i])
            if want > available[i] and not upsample:
                warnings.append(f"{names[i]}: count {want} asked but only {available[i]} usable rows; using "
                                f"{available[i]} (turn on upsample to repeat rows)")
                want = available[i]
            elif want > 0 and available[i] == 0:
                raise DataError(f"{names[i]}: count {want} asked but the source has no usable rows", "sources")
            out[i] = want
        elif ratios[i] is None:
            out[i] = available[i]  # no ratios anywhere: every usable row
    if not ratio_idx:
        if total:
            warnings.append("total is ignored: it applies to sources with a ratio")
        return out, warnings
    weight = sum(_fraction(ratios[i]) for i in ratio_idx)
    if weight <= 0:
        raise DataError("the ratios add up to 0; give at least one source a ratio above 0", "sources")
    share = {i: _fraction(ratios[i]) / weight for i in ratio_idx}
    positive = [i for i in ratio_idx if share[i] > 0]
    target = None
    if total:
        target = total - sum(out)
        if target < 0:
            raise DataError(f"the counts add up to {sum(out)}, more than total {total}", "total")
    empty = [i for i in positive if available[i] == 0]
    if empty:
        raise DataError(f"{names[empty[0]]} has no usable rows, so its ratio cannot be met", "sources")
    if upsample:
        pool = Fraction(target) if target is not None else max(Fraction(available[i]) / share[i] for i in positive)
    else:
        scarcest = min(positive, key=lambda i: Fraction(available[i]) / share[i])
        cap = Fraction(available[scarcest]) / share[scarcest]
        pool = cap if target is None else min(cap, Fraction(target))
        if target is not None and cap < target:
            warnings.append(f"total {total} cannot be reached without repeating rows: {names[scarcest]} has "
                            f"only {available[scarcest]} usable rows for its {float(share[scarcest]):.1%} "
                            f"share, so the mix shrinks (turn on upsample to repeat rows)")
    for i in positive:
        out[i] = math.floor(pool * share[i])
    if target is not None and pool == target:
        # Largest remainder: the rounded counts add up to the target exactly.
        missing = target - sum(out[i] for i in positive)
        order = sorted(positive, key=lambda i: (-(pool * share[i] - out[i]), i))
        for i in order:
            if missing <= 0:
                break
            if upsample or out[i] < available[i]:
                out[i] += 1
                missing -= 1
    return out, warnings


def _pick(n_available: int, k: int, rng: random.Random) -> list[int]:
    """k indexes into n rows: a seeded sample, or whole copies plus a sample when k > n."""
    if k <= 0 or n_available <= 0:
        return []
    reps, rest = divmod(k, n_available)
    return list(range(n_available)) * reps + sorted(rng.sample(range(n_available), rest))


# ------------------------------------------------------------------------------------- loading
def _add_drop(drops: dict, reason: str, origin: str, detail: str = "") -> None:
    entry = drops.setdefault(reason, {"count": 0, "examples": []})
    entry["count"] += 1
    if len(entry["examples"]) < EXAMPLES_PER_REASON:
        entry["examples"].append(f"{origin}: {detail}" if detail else origin)


def measure(convs: list[Conversation], tokenizer, progress: Progress | None = None,
            start: float = 0.0, span: float = 1.0, label: str = "") -> tuple[list[str], list[int]]:
    """Render every conversation with the chat template and count its tokens. Rendering (Python)
    of one chunk overlaps with tokenizing (Rust, GIL released) of the previous one."""
    texts: list[str] = []
    lengths: list[int] = []
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = None
        for at in range(0, len(convs), CHUNK):
            chunk = render_texts(convs[at: at + CHUNK], tokenizer)
            texts.extend(chunk)
            if pending is not None:
                lengths.extend(pending.result())
            pending = pool.submit(count_tokens, chunk, tokenizer)
            if progress:
                progress(start + span * min(1.0, (at + CHUNK) / max(1, len(convs))),
                         f"rendering and tokenizing {label} ({min(at + CHUNK, len(convs))}/{len(convs)})")
        if pending is not None:
            lengths.extend(pending.result())
    return texts, lengths


def _render_each(convs: list[Conversation], tokenizer, skips: list[Skip]) -> tuple[list[Conversation], list[str]]:
    """Render a chunk; when the chunk fails, render row by row so one row's failure drops only it."""
    try:
        return convs, render_texts(convs, tokenizer)
    except Exception:  # narrowed below, row by row, into counted drops
        pass
    kept, texts = [], []
    for conv in convs:
        try:
            texts.append(render_texts([conv], tokenizer)[0])
        except Exception as exc:  # a row the template cannot render is dropped with the cause
            skips.append(Skip(conv.origin, "cannot be rendered", f"{type(exc).__name__}: {exc}"))
            continue
        kept.append(conv)
    return kept, texts


def _render_stage_rows(convs: list[Conversation], tokenizer, kind: str, skips: list[Skip]
                       ) -> tuple[list[Conversation], list[str], list[str], list[list[str]]]:
    """Preference and prompt rows as the trainer will see them: (kept rows, text for people, text
    that tells duplicates apart, the pieces whose tokens make the row's length). A preference row's
    pieces are prompt, chosen, rejected (its length is the prompt and the longer reply); a prompt
    row's the prompt with the generation prompt."""
    kept, texts, keys, pieces = [], [], [], []
    for conv in convs:
        try:
            if kind == "preference":
                p = render_preference(conv, tokenizer)
                text, key, parts = p.prompt + p.chosen, f"{p.prompt}{p.chosen}\x00{p.rejected}", [p.prompt, p.chosen,
                                                                                                   p.rejected]
            else:
                text = render_prompt(conv, tokenizer)
                key, parts = f"{text}\x00{conv.meta.get('expected_answer')}", [text]
        except Exception as exc:  # a row the template cannot render is dropped with the cause
            skips.append(Skip(conv.origin, "cannot be rendered", f"{type(exc).__name__}: {exc}"))
            continue
        kept.append(conv)
        texts.append(text)
        keys.append(key)
        pieces.append(parts)
    return kept, texts, keys, pieces


def _stage_lengths(pieces: list[list[str]], tokenizer) -> list[int]:
    counts = iter(count_tokens([t for parts in pieces for t in parts], tokenizer))
    out = []
    for parts in pieces:
        n = [next(counts) for _ in parts]
        out.append(n[0] + max(n[1:]) if len(n) > 1 else n[0])
    return out


def kind_mismatch(name: str, error: KindError, kind_from: str) -> DataError:
    """A source whose rows are of another kind than the mix: a mix holds one kind of rows."""
    fixes = (f"take the source out, build it as its own mix, or set kind: {error.row_kind}"
             if kind_from.startswith("kind:") else "take the source out or build it as its own mix")
    return DataError(f"source '{name}' holds {KIND_ROWS[error.row_kind]} (format {error.fmt}), but this mix holds "
                     f"{KIND_ROWS[error.kind]} ({kind_from}). A mix holds one kind of rows: {fixes}.", "sources")


def _explain_undetected(cfg: SourceConfig, name: str, formats: Counter, skips: list[Skip], undetected: list,
                        kind: str = "auto") -> None:
    """A row whose columns fit no format is judged against the format the good rows of its source
    have, so its reason names what it lacks ("needs a column 'output'") instead of "unknown"."""
    fmt, n = formats.most_common(1)[0]
    for index, item in undetected:
        try:
            to_conversation(item.data, item.origin, fmt=fmt, columns=cfg.columns, instruction_in=cfg.instruction_in,
                            system_prompt=cfg.system_prompt, source=name, kind=kind)
        except RowError as exc:
            skips[index] = Skip(item.origin, exc.reason, f"{exc.detail} (read as {fmt}, the format of the "
                                                         f"{n} good rows)")


def load_source(cfg: SourceConfig, name: str, tokenizer, *, progress: Progress | None = None,
                start: float = 0.0, span: float = 1.0, loaders: dict | None = None,
                reasoning_turns: str = "last_only", kind: str = "auto",
                kind_from: str = "the mix settings") -> LoadedSource:
    """Read, convert, render and measure one source, streaming: each chunk of converted rows is
    rendered here while the previous chunk is tokenized in a thread (Rust releases the GIL), so
    reading, rendering and tokenizing overlap. Rows that cannot be used are kept as skips, problems
    of rows that are kept as notices. ``kind`` is the mix's (see core.data.formats.to_conversation);
    ``auto`` takes the kind of the first row that converts. A source whose rows are all of another
    kind is a :class:`DataError` (``kind_from`` says where the mix's kind came from)."""
    check_columns(cfg.columns, cfg.format)
    rows, location = open_source(cfg.path, cfg.hub, cfg.split, cfg.subset, cfg.limit, loaders)
    convs: list[Conversation] = []
    texts: list[str] = []
    keys: list[str] = []
    lengths: list[int] = []
    skips: list[Skip] = []
    notices: list[Skip] = []
    formats: Counter = Counter()
    reasoning = {"mode": reasoning_turns, "rows": 0, "replies": 0, "extra_rows": 0}
    undetected: list = []  # (skip index, row) of rows whose format could not be told
    mismatch: KindError | None = None
    read = 0
    if progress:
        progress(start, f"reading {name}")

    def renderer(conv: Conversation) -> str:
        return render_texts([conv], tokenizer)[0]

    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = None
        batch: list[Conversation] = []
        batch_formats: dict[int, str] = {}

        def flush() -> None:
            nonlocal pending
            if kind in ("preference", "prompt"):
                kept, kept_texts, kept_keys, pieces = _render_stage_rows(list(batch), tokenizer, kind, skips)
                keys.extend(kept_keys)
                job = (_stage_lengths, pieces, tokenizer)
            else:
                chunk, chunk_texts = _render_each(list(batch), tokenizer, skips)
                kept, kept_texts = [], []
                for conv, text in zip(chunk, chunk_texts):
                    try:
                        reply_spans(conv, text, renderer)
                    except MaskError as exc:
                        skips.append(Skip(conv.origin, "mask ambiguous", str(exc)))
                        continue
                    kept.append(conv)
                    kept_texts.append(text)
                job = (count_tokens, kept_texts, tokenizer)
            kept_ids = {id(c) for c in kept}
            for conv in batch:
                if id(conv) in kept_ids:
                    formats[batch_formats[id(conv)]] += 1
            convs.extend(kept)
            texts.extend(kept_texts)
            if pending is not None:
                lengths.extend(pending.result())
            pending = pool.submit(*job)
            batch.clear()
            batch_formats.clear()
            if progress:
                # The row count of a source is unknown until it is read: approach the end smoothly.
                progress(start + span * len(convs) / (len(convs) + 20 * CHUNK),
                         f"reading, rendering and tokenizing {name} ({len(convs)} rows)")

        for item in rows:
            read += 1
            if isinstance(item, Skip):
                skips.append(item)
                continue
            notes: list = []
            try:
                conv, fmt = to_conversation(item.data, item.origin, fmt=cfg.format, columns=cfg.columns,
                                            instruction_in=cfg.instruction_in, system_prompt=cfg.system_prompt,
                                            source=name, notes=notes, kind=kind)
            except KindError as exc:
                mismatch = mismatch or exc
                skips.append(Skip(item.origin, exc.reason, exc.detail))
                continue
            except RowError as exc:
                skips.append(Skip(item.origin, exc.reason, exc.detail))
                if exc.reason == "unknown format" and len(undetected) < EXPLAIN_UNDETECTED:
                    undetected.append((len(skips) - 1, item))
                continue
            if kind == "auto":
                kind = conv.kind
            notices += [Skip(item.origin, k, detail) for k, detail in notes]
            parts = [conv]
            if kind == "sft":
                lost = dropped_reasoning(conv)
                if lost:
                    reasoning["rows"] += 1
                    reasoning["replies"] += len(lost)
                parts = apply_reasoning_turns(conv, reasoning_turns)
                reasoning["extra_rows"] += len(parts) - 1
            for part in parts:
                batch.append(part)
                batch_formats[id(part)] = fmt
            if len(batch) >= CHUNK:
                flush()
        if batch:
            flush()
        if pending is not None:
            lengths.extend(pending.result())
    if undetected and formats:
        _explain_undetected(cfg, name, formats, skips, undetected, kind)
    if not convs:
        if mismatch is not None:
            raise kind_mismatch(name, mismatch, kind_from)
        reasons = Counter(s.reason for s in skips)
        top = "; ".join(f"{r} x{c}" for r, c in reasons.most_common(3))
        example = next((f" (e.g. {s.origin}: {s.detail})" for s in skips if s.detail), "")
        where = location.hub_id or ", ".join(f.path for f in location.files)
        raise DataError(f"source '{name}' ({where}) has no usable rows: {read} read, all skipped: {top}"
                        f"{example}. Check format: and columns: for this source.", "sources")
    return LoadedSource(name, location, convs, texts, lengths, formats, read, skips, notices, reasoning,
                        kind=kind if kind != "auto" else "sft", keys=keys if kind in ("preference", "prompt") else None)


class SourceCache:
    """Loaded sources of one session (the GUI keeps one per browser tab), so changing a ratio or the
    seed re-mixes at once. Local files are re-read when their size or time changes."""

    def __init__(self, capacity: int = 16):
        self.capacity = capacity
        self._items: dict[tuple, LoadedSource] = {}

    @staticmethod
    def key(cfg: SourceConfig, name: str, tokenizer, reasoning_turns: str = "last_only", kind: str = "auto") -> tuple:
        stamp: tuple = ()
        kind = source_kind(cfg.path, cfg.hub)
        if kind in ("local", "sample"):
            path = sample_path(cfg.path.strip()) if kind == "sample" else Path(cfg.path.strip()).expanduser()
            try:
                stamp = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in local_files(path))
            except (DataError, OSError):
                stamp = ("missing",)
        spec = (cfg.path, cfg.hub, cfg.split, cfg.subset, cfg.limit, cfg.format, tuple(sorted(cfg.columns.items())),
                cfg.instruction_in, cfg.system_prompt, name, reasoning_turns, kind)
        tok = (str(tokenizer.name_or_path), hash(str(tokenizer.chat_template)), len(tokenizer))
        return spec + stamp + tok

    def get(self, key: tuple) -> LoadedSource | None:
        return self._items.get(key)

    def put(self, key: tuple, value: LoadedSource) -> None:
        self._items.pop(key, None)
        self._items[key] = value
        while len(self._items) > self.capacity:
            self._items.pop(next(iter(self._items)))


def source_names(cfg: MixConfig) -> list[str]:
    """Each source's report name: its ``name``, else derived from the path; made unique."""
    from core.data.sources import default_name

    names: list[str] = []
    for s in cfg.sources:
        base = s.name.strip() or default_name(s.path.strip(), source_kind(s.path, s.hub))
        name, k = base, 2
        while name in names:
            name, k = f"{base}-{k}", k + 1
        names.append(name)
    return names


# --------------------------------------------------------------------------------------- build
def build_mix(cfg: MixConfig, tokenizer, out_dir: str | Path | None = None, progress: Progress | None = None,
              *, cache: SourceCache | None = None, loaders: dict | None = None, overwrite: bool = False
              ) -> MixResult:
    """Read every source, render and measure it with ``tokenizer``, apply the length policy, mix by
    ratio with ``cfg.seed``, and (when ``out_dir`` is given) save the mix folder. ``tokenizer`` may be
    a loaded tokenizer, a spec for :func:`load_tokenizer` ("qwen3", "demo", a folder, a catalog key, a
    hub id), or None for ``cfg.tokenizer``."""
    if tokenizer is None or isinstance(tokenizer, str):
        tokenizer = load_tokenizer(cfg.tokenizer if tokenizer is None else tokenizer)
    # The manifest's settings name the tokenizer that really measured the rows.
    cfg = dataclasses.replace(cfg, tokenizer=tokenizer_info(tokenizer)["spec"] or cfg.tokenizer)
    # A mix holds millions of small, acyclic objects (rows, messages, texts); the cyclic collector
    # would rescan them over and over (at 100k rows: 197 s with it, 66 s without, in our runs).
    # Reference counting frees them all the same, so collection pauses for the build.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _build(cfg, tokenizer, out_dir, progress, cache, loaders, overwrite)
    finally:
        if was_enabled:
            gc.enable()


def _build(cfg: MixConfig, tokenizer, out_dir, progress, cache, loaders, overwrite) -> MixResult:
    if not cfg.sources:
        raise ConfigError("a mix needs at least one source", "sources")
    names = source_names(cfg)
    n = len(cfg.sources)
    loaded: list[LoadedSource] = []
    kind = cfg.kind
    kind_from = f"kind: {kind} in the mix settings" if kind != "auto" else ""
    for i, (scfg, name) in enumerate(zip(cfg.sources, names)):
        key = SourceCache.key(scfg, name, tokenizer, cfg.reasoning_turns, kind) if cache is not None else None
        item = cache.get(key) if cache is not None else None
        if item is None:
            try:
                item = load_source(scfg, name, tokenizer, progress=progress, start=0.85 * i / n,
                                   span=0.85 / n, loaders=loaders, reasoning_turns=cfg.reasoning_turns, kind=kind,
                                   kind_from=kind_from)
            except ConfigError as exc:
                if exc.where.startswith("sources"):
                    raise
                raise type(exc)(exc.reason, f"sources[{i}].{exc.where}" if exc.where else f"sources[{i}]",
                                exc.source) from None
            if cache is not None:
                cache.put(key, item)
        if kind == "auto":
            # The first source decides; the others must fit it.
            kind, kind_from = item.kind, f"the kind of its first source '{name}'; set kind: to choose"
        loaded.append(item)
    if progress:
        progress(0.86, "mixing")
    result = _mix(cfg, names, loaded, tokenizer)
    result.kind = kind if kind != "auto" else "sft"
    if out_dir is not None:
        if progress:
            progress(0.9, "writing the mix folder")
        save_mix(result, out_dir, overwrite=overwrite)
    if progress:
        progress(1.0, "done")
    return result


def _mix(cfg: MixConfig, names: list[str], loaded: list[LoadedSource], tokenizer) -> MixResult:
    reports: list[SourceReport] = []
    available: list[list[int]] = []
    over: list[set[int]] = []
    warnings: list[str] = []
    seen: dict[str, tuple[int, int]] = {}  # rendered text -> (source, row) of its first row, over all sources
    for si, (scfg, name, src) in enumerate(zip(cfg.sources, names, loaded)):
        drops: dict = {}
        notices: dict = {}
        for s in src.skips:
            _add_drop(drops, s.reason, s.origin, s.detail)
        for s in src.notices:
            _add_drop(notices, s.reason, s.origin, s.detail)
        keep, long_rows = [], set()
        for j, (conv, length) in enumerate(zip(src.conversations, src.lengths)):
            at = seen.setdefault(src.keys[j] if src.keys is not None else src.texts[j], (si, j))
            if at != (si, j):
                first = loaded[at[0]].conversations[at[1]].origin
                if cfg.dedupe:
                    _add_drop(drops, "exact duplicate", conv.origin, f"same text as {first}")
                    continue
                _add_drop(notices, "exact duplicate", conv.origin, f"same text as {first} (dedupe: true drops it)")
            if scfg.min_tokens and length < scfg.min_tokens:
                _add_drop(drops, "shorter than min_tokens", conv.origin, f"{length} < {scfg.min_tokens} tokens")
            elif scfg.max_tokens and length > scfg.max_tokens:
                _add_drop(drops, "longer than max_tokens", conv.origin, f"{length} > {scfg.max_tokens} tokens")
            elif length > cfg.max_seq_len and cfg.overlong == "drop":
                _add_drop(drops, "longer than max_seq_len", conv.origin, f"{length} > {cfg.max_seq_len} tokens")
            else:
                if length > cfg.max_seq_len:
                    long_rows.add(j)
                keep.append(j)
        report = SourceReport(name=name, config=to_dict(scfg), location=src.location.to_json(),
                              formats=dict(src.formats), rows_read=src.rows_read, parsed=len(src.conversations),
                              usable=len(keep), drops=drops, notices=notices, reasoning=dict(src.reasoning),
                              lengths=src.lengths, length_stats=length_stats(src.lengths, cfg.max_seq_len),
                              warnings=list(src.location.warnings))
        warnings += [f"{name}: {w}" for w in src.location.warnings]
        lost = src.reasoning or {}
        if lost.get("rows"):
            what = (f"{lost['rows']} rows have reasoning in turns before the last user turn "
                    f"({lost['replies']} replies), which Qwen3's template leaves out")
            if cfg.reasoning_turns == "last_only":
                warnings.append(f"{name}: {what}: those replies train with no think block "
                                "(reasoning_turns: split or mask_earlier avoids it)")
            elif cfg.reasoning_turns == "split":
                warnings.append(f"{name}: {what}: split into {lost['extra_rows']} extra rows (reasoning_turns: split)")
            else:
                warnings.append(f"{name}: {what}: those replies get no loss (reasoning_turns: mask_earlier)")
        reports.append(report)
        available.append(keep)
        over.append(long_rows)

    ratios = [s.ratio for s in cfg.sources]
    plan, plan_warnings = plan_counts(ratios, [s.count for s in cfg.sources], [len(a) for a in available],
                                      upsample=cfg.upsample, total=cfg.total, names=names)
    warnings += plan_warnings
    weight = sum(r for r in ratios if r is not None)
    picked: list[tuple[int, int]] = []  # (source index, conversation index)
    for i, (k, keep) in enumerate(zip(plan, available)):
        rng = random.Random(f"{cfg.seed}:source:{i}")
        chosen = [keep[j] for j in _pick(len(keep), k, rng)]
        picked += [(i, j) for j in chosen]
        rep = reports[i]
        rep.used = len(chosen)
        rep.repeated = max(0, len(chosen) - len(set(chosen)))
        rep.truncated = sum(1 for j in chosen if j in over[i])
        if ratios[i] is not None and weight:
            rep.share = round(ratios[i] / weight, 6)
    if any(r.truncated for r in reports):
        n_trunc = sum(r.truncated for r in reports)
        warnings.append(f"{n_trunc} rows are longer than max_seq_len {cfg.max_seq_len} and will be truncated. "
                        + TRUNCATION_WARNING)
    if cfg.shuffle:
        random.Random(f"{cfg.seed}:shuffle").shuffle(picked)

    eval_keys: set[tuple[int, int]] = set()
    if cfg.eval_fraction > 0 and len(picked) >= 2:
        want = max(1, int(len(picked) * cfg.eval_fraction))
        # Whole groups of copies go to eval, so a repeated row never sits in both splits.
        groups = Counter(picked)
        order = sorted(groups)
        random.Random(f"{cfg.seed}:eval").shuffle(order)
        got = 0
        for key in order:
            if got >= want:
                break
            if got + groups[key] > want and got:
                continue
            eval_keys.add(key)
            got += groups[key]

    json_cache: dict[tuple[int, int], dict] = {}

    def row(key: tuple[int, int]) -> dict:
        conv = loaded[key[0]].conversations[key[1]]
        if key not in json_cache:
            json_cache[key] = conv.to_json()
        return {"conversation": json_cache[key], "text": loaded[key[0]].texts[key[1]],
                "n_tokens": loaded[key[0]].lengths[key[1]], "source": names[key[0]]}

    train_keys = [k for k in picked if k not in eval_keys]
    eval_list = [k for k in picked if k in eval_keys]
    return MixResult(
        config=cfg, sources=reports,
        train=[loaded[i].conversations[j] for i, j in train_keys],
        eval=[loaded[i].conversations[j] for i, j in eval_list],
        rows=[row(k) for k in train_keys], eval_rows=[row(k) for k in eval_list],
        tokenizer=tokenizer_info(tokenizer), warnings=warnings,
    )


# ---------------------------------------------------------------------------------------- save
_NAME = re.compile(r"^[\w][\w .+-]{0,79}$")


def check_mix_name(name: str) -> str:
    """A mix name that is safe as a folder name (letters of any script, digits, space . _ + -)."""
    name = (name or "").strip()
    if not name or not _NAME.match(name) or name in (".", "..") or name.endswith("."):
        raise ConfigError("use 1-80 letters, digits, spaces or . _ + - (not starting with a dot or space)",
                          "name")
    return name


def save_mix(result: MixResult, out_dir: str | Path, *, overwrite: bool = False) -> Path:
    """Write the mix folder (see core.data.mixdir). It is assembled in a hidden folder beside the
    target and moved into place, so a reader never sees half a mix. An existing mix folder is
    replaced only with ``overwrite``; any other non-empty folder is refused."""
    from core.data.mixdir import MANIFEST, write_mix_dir

    out = Path(out_dir).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not (out / MANIFEST).exists():
            raise DataError("the folder exists and is not a saved mix; choose a new or empty folder", "out",
                            str(out))
        if not overwrite:
            raise DataError("a mix is already saved there; choose another name or allow overwriting", "out",
                            str(out))
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create the folder: {exc.strerror or exc}", "out", str(out.parent)) from None
    tmp = out.parent / f".{out.name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        write_mix_dir(tmp, result.rows, result.eval_rows, result.manifest())
    except OSError as exc:
        # Nothing half-written stays behind: the hidden folder goes, the target is untouched.
        shutil.rmtree(tmp, ignore_errors=True)
        raise _write_error(exc, out, result) from None
    if out.exists():
        old = out.parent / f".{out.name}.old"
        if old.exists():
            shutil.rmtree(old)
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old)
    else:
        tmp.rename(out)
    result.out_dir = out
    return out


def estimated_size(result: MixResult) -> int:
    """Bytes a mix folder takes, about: each row's text and conversation, in JSON Lines and Parquet."""
    per_copy = sum(len(r["text"].encode("utf-8", "replace")) * 2 + 64 for r in result.rows + result.eval_rows)
    return 2 * per_copy


def _write_error(exc: OSError, out: Path, result: MixResult) -> DataError:
    import errno

    if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        try:
            free = shutil.disk_usage(out.parent).free
        except OSError:
            free = 0
        mb = 1024 * 1024
        return DataError(f"the disk is full: the mix needs about {estimated_size(result) / mb:,.1f} MB and "
                         f"{free / mb:,.1f} MB are free in {out.parent}; nothing was written. Free some space "
                         "or save the mix elsewhere.", "out", str(out))
    return DataError(f"cannot write the mix folder: {exc.strerror or exc}"
                     + (f" ({exc.filename})" if exc.filename else ""), "out", str(out))
