"""Qwen3's recommended sampling per mode, and the token sampler both chat panes share.

Qwen3's model cards recommend temperature 0.6, top-p 0.95, top-k 20, min-p 0 with thinking and
temperature 0.7, top-p 0.8, top-k 20, min-p 0 without, and advise against greedy decoding in
thinking mode (it can repeat endlessly). Settings left empty in :class:`core.config.SamplingConfig`
take these values; anything set explicitly wins.

The sampler runs where the logits are (the GPU in chat), on every row of a batch at once, in float32:
no full row of logits is copied to the host. Each prompt has a ``torch.Generator`` seeded from the
request, and the base and the fine-tuned row of that prompt draw the same random numbers from it,
so the panes differ only by model.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from core.config import SamplingConfig

PRESETS: dict[str, dict[str, float | int]] = {
    "thinking": {"temperature": 0.6, "top_p": 0.95, "top_k": 20, "min_p": 0.0},
    "non_thinking": {"temperature": 0.7, "top_p": 0.8, "top_k": 20, "min_p": 0.0},
}


def preset(thinking: bool) -> dict[str, float | int]:
    """Qwen3's recommended sampling values for the mode (a copy, safe to edit)."""
    return dict(PRESETS["thinking" if thinking else "non_thinking"])


@dataclass(frozen=True)
class Sampling:
    """Fully resolved sampling settings for one request."""

    thinking: bool
    temperature: float
    top_p: float
    top_k: int
    min_p: float
    presence_penalty: float
    greedy: bool
    max_new_tokens: int
    seed: int

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def resolve(cfg: SamplingConfig | None = None, **overrides) -> Sampling:
    """Fill empty values from the mode's preset; ``overrides`` replace fields of ``cfg`` first."""
    cfg = dataclasses.replace(cfg or SamplingConfig(), **overrides)
    base = preset(cfg.thinking)
    temperature = base["temperature"] if cfg.temperature is None else float(cfg.temperature)
    return Sampling(
        thinking=bool(cfg.thinking),
        temperature=temperature,
        top_p=float(base["top_p"] if cfg.top_p is None else cfg.top_p),
        top_k=int(base["top_k"] if cfg.top_k is None else cfg.top_k),
        min_p=float(base["min_p"] if cfg.min_p is None else cfg.min_p),
        presence_penalty=float(cfg.presence_penalty),
        greedy=bool(cfg.greedy or temperature <= 0.0),
        max_new_tokens=int(cfg.max_new_tokens),
        seed=int(cfg.seed),
    )


def make_generator(seed: int, device="cpu"):
    """A ``torch.Generator`` on ``device`` seeded with ``seed`` (one per prompt: both panes share it)."""
    import torch

    gen = torch.Generator(device=torch.device(device))
    gen.manual_seed(int(seed))
    return gen


def _penalise(logits, s: Sampling, seen):
    """Presence penalty: ``seen`` is a (rows, vocab) bool mask of tokens already generated, or a set."""
    import torch

    if not s.presence_penalty or seen is None:
        return logits
    if isinstance(seen, (set, list, tuple)):
        if not seen:
            return logits
        mask = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
        mask[torch.tensor(sorted(seen), dtype=torch.long, device=logits.device)] = True
        seen = mask.expand_as(logits)
    return logits - seen.to(logits.dtype) * s.presence_penalty


def candidates(logits, s: Sampling, seen=None):
    """The tokens sampling may pick, per row: ``(values, ids)``, both (rows, K), best first.

    ``values`` are the processed logits (presence penalty, temperature) with the tokens that top-k,
    top-p or min-p remove set to ``-inf``; K is top_k when it limits, else the whole vocabulary. The
    order matches vLLM and transformers: penalties, temperature, then the three truncations. Works on
    any device, on a batch of rows at once, with no copy to the host."""
    import torch

    logits = _penalise(logits.float(), s, seen)
    logits = logits / max(s.temperature, 1e-5)
    vocab = logits.shape[-1]
    if 0 < s.top_k < vocab:
        values, ids = torch.topk(logits, s.top_k, dim=-1)
    else:
        values, ids = torch.sort(logits, dim=-1, descending=True)
    if 0.0 < s.top_p < 1.0:
        probs = torch.softmax(values, dim=-1)
        # Keep a token while the mass before it is below top_p, so the top token always stays.
        drop = (probs.cumsum(-1) - probs) >= s.top_p
        values = values.masked_fill(drop, float("-inf"))
    if s.min_p > 0.0:
        probs = torch.softmax(values, dim=-1)
        values = values.masked_fill(probs < s.min_p * probs[..., :1], float("-inf"))
    return values, ids


def filter_logits(logits, s: Sampling, seen=None):
    """One row (or a batch) of logits with the removed tokens at ``-inf`` (greedy: penalised only)."""
    import torch

    logits = logits.float()
    if s.greedy:
        return _penalise(logits, s, seen)
    values, ids = candidates(logits, s, seen)
    return torch.full_like(logits, float("-inf")).scatter(-1, ids, values)


def draw(values, ids, noise):
    """Sample one token per row from ``candidates`` with the exponential race: argmax p_i / E_i with
    E_i ~ Exp(1) picks token i with probability p_i. ``noise`` (rows, K) holds the E_i; rows that share
    noise (the two panes of one prompt) pick the same token wherever their distributions agree."""
    import torch

    probs = torch.softmax(values, dim=-1)
    pick = torch.argmax(probs / noise, dim=-1, keepdim=True)
    return ids.gather(-1, pick).squeeze(-1)


def sample_rows(logits, s: Sampling, generators: list, groups: list[int] | None = None, seen=None):
    """Next token of every row of ``logits`` (rows, vocab), as a device tensor of ids.

    ``generators``: one per group of rows (made by :func:`make_generator` on the logits' device);
    ``groups[r]``: the group of row r (default: row r is group r). Each step draws one noise vector
    per group, so the base and the fine-tuned row of one prompt use the same random numbers."""
    import torch

    if s.greedy:
        return torch.argmax(_penalise(logits.float(), s, seen), dim=-1)
    values, ids = candidates(logits, s, seen)
    k = values.shape[-1]
    per_group = [torch.empty(k, device=values.device).exponential_(generator=g) for g in generators]
    noise = torch.stack(per_group)
    if groups is not None and list(groups) != list(range(len(generators))):
        noise = noise[torch.tensor(groups, device=values.device)]
    return draw(values, ids, noise)


def sample_next(logits, s: Sampling, generator, seen: set[int] | None = None) -> int:
    """Pick the next token id from one row of logits (a host-side convenience over sample_rows)."""
    return int(sample_rows(logits.reshape(1, -1), s, [generator], seen=seen).item())
