"""One base model in memory with an adapter: the base pane is the plain base model, token for token."""

from __future__ import annotations

import pytest

from core.chat.engine import AdapterStateError
from core.chat.sampling import resolve

QUESTIONS = ["What is the capital of France?", "用一句话介绍你自己。", "List three colours."]


@pytest.mark.parametrize("thinking", [False, True])
def test_base_pane_equals_plain_base_model_greedy(peft_engine, plain_engine, thinking):
    s = resolve(greedy=True, thinking=thinking, max_new_tokens=24)
    differs = 0
    for q in QUESTIONS:
        prompt = peft_engine.prompt([{"role": "user", "content": q}], thinking=thinking)
        ids = peft_engine.encode(prompt)
        plain = plain_engine.generate_ids("base", ids, s)
        assert peft_engine.generate_ids("base", ids, s) == plain  # token for token
        differs += peft_engine.generate_ids("tuned", ids, s) != plain
    assert differs == len(QUESTIONS)  # the adapter really changes every answer


def test_interleaved_compare_keeps_the_base_pane_clean(peft_engine, plain_engine):
    """Alternating base/tuned steps (as the GUI streams them) must not leak the adapter into base."""
    msgs = [{"role": "user", "content": QUESTIONS[0]}]
    s = resolve(thinking=False, max_new_tokens=20, seed=5)  # sampled, same seed in both panes
    replies = peft_engine.compare(msgs, s)
    plain = plain_engine.generate("base", msgs, s)
    assert replies["base"].token_ids == plain.token_ids
    assert replies["tuned"].token_ids != plain.token_ids


def test_adapter_is_on_again_after_a_base_step(peft_engine):
    ids = peft_engine.encode(peft_engine.prompt([{"role": "user", "content": "hi"}], thinking=False))
    peft_engine.generate_ids("base", ids, resolve(greedy=True, max_new_tokens=2))
    assert all(peft_engine._adapter_enabled())  # the PEFT model is left as it was found


def test_base_loss_equals_plain_loss(peft_engine, plain_engine):
    ids = peft_engine.encode(peft_engine.prompt([{"role": "user", "content": "hi"}], thinking=False) + "Hello!")
    rows = [(ids, [0] * 10 + [1] * (len(ids) - 10))]
    (base_nll, n), = peft_engine.token_nll("base", rows)
    (plain_nll, m), = plain_engine.token_nll("base", rows)
    assert n == m == len(ids) - 10 and base_nll == pytest.approx(plain_nll, rel=1e-6)
    assert peft_engine.token_nll("tuned", rows)[0][0] != pytest.approx(plain_engine.token_nll("base", rows)[0][0])


def test_a_wrong_adapter_state_refuses_to_generate(peft_engine):
    layer = peft_engine._tuner_layers[0]
    layer._disable_adapters = True  # as if something had switched the adapter off behind our back
    try:
        ids = peft_engine.encode("x")
        with pytest.raises(AdapterStateError):
            peft_engine.generate_ids("tuned", ids, resolve(greedy=True, max_new_tokens=1))
    finally:
        layer._disable_adapters = False
