"""Qwen3's recommended sampling per mode, and the token sampler both chat panes share.

Qwen3's model cards recommend temperature 0.6, top-p 0.95, top-k 20, min-p 0 with thinking and
temperature 0.7, top-p 0.8, top-k 20, min-p 0 without, and advise against greedy decoding in
thinking mode (it can repeat endlessly). Settings left empty in :class:`core.config.SamplingConfig`
take these values; anything set explicitly wins.

The sampler runs on the CPU in float32 with a ``torch.Generator`` seeded per request: the same seed
then draws the same random numbers in both panes, on any device, so the panes differ only by model.
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


def make_generator(seed: int):
    import torch

    gen = torch.Generator(device="cpu")
    gen.manual_seed(int(seed))
    return gen


def filter_logits(logits, s: Sampling, seen: set[int] | None = None):
    """Apply presence penalty, temperature, top-k, top-p and min-p to one row of logits (float32, CPU).

    Returns the processed logits; removed tokens are ``-inf``. The order matches vLLM and
    transformers: penalties, temperature, then the three truncations."""
    import torch

    logits = logits.float().clone()
    if seen and s.presence_penalty:
        idx = torch.tensor(sorted(seen), dtype=torch.long)
        logits[idx] -= s.presence_penalty
    if s.greedy:
        return logits
    logits = logits / max(s.temperature, 1e-5)
    vocab = logits.shape[-1]
    if 0 < s.top_k < vocab:
        kth = torch.topk(logits, s.top_k).values[-1]
        logits[logits < kth] = float("-inf")
    if 0.0 < s.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cum = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
        # Keep a token while the mass before it is below top_p, so the top token always stays.
        drop_sorted = (cum - torch.softmax(sorted_logits, dim=-1)) >= s.top_p
        logits[order[drop_sorted]] = float("-inf")
    if s.min_p > 0.0:
        probs = torch.softmax(logits, dim=-1)
        logits[probs < s.min_p * probs.max()] = float("-inf")
    return logits


def sample_next(logits, s: Sampling, generator, seen: set[int] | None = None) -> int:
    """Pick the next token id from one row of logits."""
    import torch

    logits = filter_logits(logits.detach().to("cpu"), s, seen)
    if s.greedy:
        return int(torch.argmax(logits).item())
    probs = torch.softmax(logits, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator).item())
