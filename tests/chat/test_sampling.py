"""Qwen3's presets and the sampler's truncations."""

from __future__ import annotations

import torch

from core.chat.sampling import PRESETS, filter_logits, make_generator, preset, resolve, sample_next
from core.config import SamplingConfig


def test_presets_are_qwen3_recommendations():
    assert PRESETS["thinking"] == {"temperature": 0.6, "top_p": 0.95, "top_k": 20, "min_p": 0.0}
    assert PRESETS["non_thinking"] == {"temperature": 0.7, "top_p": 0.8, "top_k": 20, "min_p": 0.0}
    p = preset(True)
    p["temperature"] = 9
    assert PRESETS["thinking"]["temperature"] == 0.6  # preset() hands out a copy


def test_resolve_fills_empty_values_from_the_mode_and_keeps_edits():
    s = resolve(SamplingConfig(thinking=False))
    assert (s.temperature, s.top_p, s.top_k, s.min_p) == (0.7, 0.8, 20, 0.0)
    s = resolve(SamplingConfig(thinking=True, top_k=5, temperature=1.1))
    assert (s.temperature, s.top_p, s.top_k) == (1.1, 0.95, 5)
    assert resolve(temperature=0.0).greedy  # temperature 0 means greedy


def test_truncations():
    s = resolve(SamplingConfig(thinking=True, temperature=1.0, top_k=3, top_p=1.0, min_p=0.0))
    logits = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0])
    kept = torch.isfinite(filter_logits(logits, s))
    assert kept.tolist() == [True, True, True, False, False]
    s = resolve(SamplingConfig(temperature=1.0, top_k=0, top_p=0.5, min_p=0.0))
    probs = torch.tensor([0.6, 0.3, 0.1]).log()
    assert torch.isfinite(filter_logits(probs, s)).tolist() == [True, False, False]
    s = resolve(SamplingConfig(temperature=1.0, top_k=0, top_p=1.0, min_p=0.4))
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05]).log()
    assert torch.isfinite(filter_logits(probs, s)).tolist() == [True, True, False, False]


def test_presence_penalty_and_greedy():
    s = resolve(SamplingConfig(greedy=True, presence_penalty=2.0))
    logits = torch.tensor([3.0, 2.0, 0.0])
    assert sample_next(logits, s, make_generator(0)) == 0
    assert sample_next(logits, s, make_generator(0), seen={0}) == 1


def test_same_seed_same_draws():
    s = resolve(SamplingConfig(temperature=1.0, top_k=0, top_p=1.0))
    logits = torch.zeros(50)
    a = [sample_next(logits, s, g) for g in [make_generator(7)] for _ in range(20)]
    b = [sample_next(logits, s, g) for g in [make_generator(7)] for _ in range(20)]
    c = [sample_next(logits, s, g) for g in [make_generator(8)] for _ in range(20)]
    assert a == b and a != c
