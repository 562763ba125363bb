"""GRPO rollouts on CPU with the demo model: the chat engine's batched decode against HF generate."""

from __future__ import annotations

import pytest

from core.train import rollout
from core.train.rollout import FALLBACK_ATTR, generate_completions

QUESTIONS = ["What is 6 * 7?", "用一句话介绍你自己。", "List three colours, then say which one you like best and why."]


@pytest.fixture(scope="module")
def base_model(demo_model_path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(demo_model_path)


@pytest.fixture(scope="module")
def lora_model(demo_model_path):
    """The demo model with a random, non-zero LoRA adapter in training mode, as the trainer holds it."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(demo_model_path), LoraConfig(
        r=8, lora_alpha=16, init_lora_weights=False, target_modules=["q_proj", "v_proj", "up_proj", "down_proj"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.mul_(4.0)
    model.train()
    return model


@pytest.fixture(scope="module")
def prompts(demo_tokenizer):
    out = []
    for q in QUESTIONS:
        text = demo_tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                                  add_generation_prompt=True)
        out.append(demo_tokenizer(text, add_special_tokens=False)["input_ids"])
    assert len({len(p) for p in out}) == len(out)  # different lengths: left padding is exercised
    return out


def hf_greedy(model, ids, max_new_tokens, eos):
    """HF generate's greedy output for one prompt (no padding), cut after its first eos."""
    import torch

    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=max_new_tokens, do_sample=False, temperature=None, top_p=None, top_k=None,
                             eos_token_id=eos, pad_token_id=eos[0])
    row = out[0, len(ids):].tolist()
    cut = next((i for i, t in enumerate(row) if t in eos), None)
    return row if cut is None else row[:cut + 1]


def test_shapes_and_lengths(base_model, demo_tokenizer, prompts):
    out = generate_completions(base_model, demo_tokenizer, prompts * 2, max_new_tokens=12, temperature=1.0, seed=3)
    assert len(out) == 6
    assert all(isinstance(t, int) for row in out for t in row)
    assert all(1 <= len(row) <= 12 for row in out)
    assert generate_completions(base_model, demo_tokenizer, [], max_new_tokens=4, temperature=1.0) == []
    with pytest.raises(ValueError, match="at least one token"):
        generate_completions(base_model, demo_tokenizer, [[]], max_new_tokens=4, temperature=1.0)


def test_greedy_equals_hf_generate(base_model, demo_tokenizer, prompts):
    eos = [demo_tokenizer.convert_tokens_to_ids("<|im_end|>"), demo_tokenizer.eos_token_id]
    ours = generate_completions(base_model, demo_tokenizer, prompts, max_new_tokens=24, temperature=0.0,
                                eos_token_ids=eos)
    assert ours == [hf_greedy(base_model, p, 24, eos) for p in prompts]


def test_eos_ends_a_row_and_is_included(base_model, demo_tokenizer, prompts):
    never = [demo_tokenizer.convert_tokens_to_ids("<|im_start|>")]
    full = generate_completions(base_model, demo_tokenizer, prompts, max_new_tokens=16, temperature=0.0,
                                eos_token_ids=never)
    assert all(len(row) == 16 for row in full)  # no stop token: every row runs to the limit
    # Make the token row 0 draws at step k a stop token: row 0 ends right there, the token kept;
    # every other row ends at its own first occurrence of it, or runs on.
    k = next(i for i in range(3, 16) if full[0][i] not in full[0][:i])
    stop = full[0][k]
    cut = generate_completions(base_model, demo_tokenizer, prompts, max_new_tokens=16, temperature=0.0,
                               eos_token_ids=[stop])
    assert cut[0] == full[0][:k + 1]
    for row_full, row_cut in zip(full[1:], cut[1:]):
        at = row_full.index(stop) if stop in row_full else None
        assert row_cut == (row_full if at is None else row_full[:at + 1])


def test_sampling_follows_the_seed(base_model, demo_tokenizer, prompts):
    import torch

    def draw(seed):
        return generate_completions(base_model, demo_tokenizer, [prompts[0]] * 4, max_new_tokens=16,
                                    temperature=1.0, seed=seed)

    a, b = draw(1), draw(2)
    assert a == draw(1)
    assert a != b
    assert len({tuple(r) for r in a}) > 1  # copies of one prompt (a GRPO group) differ
    # Without a seed, torch's global generator decides: set_seed makes the rollouts repeatable.
    torch.manual_seed(7)
    c = generate_completions(base_model, demo_tokenizer, [prompts[0]] * 4, max_new_tokens=16, temperature=1.0)
    torch.manual_seed(7)
    assert c == generate_completions(base_model, demo_tokenizer, [prompts[0]] * 4, max_new_tokens=16,
                                     temperature=1.0)


def test_top_k_one_is_greedy(base_model, demo_tokenizer, prompts):
    greedy = generate_completions(base_model, demo_tokenizer, prompts, max_new_tokens=12, temperature=0.0)
    assert generate_completions(base_model, demo_tokenizer, prompts, max_new_tokens=12, temperature=1.3,
                                top_k=1, seed=5) == greedy


def test_the_adapter_is_active_and_the_model_left_as_found(lora_model, demo_tokenizer, prompts):
    import torch

    eos = [demo_tokenizer.convert_tokens_to_ids("<|im_end|>")]
    ours = generate_completions(lora_model, demo_tokenizer, prompts, max_new_tokens=20, temperature=0.0,
                                eos_token_ids=eos)
    assert lora_model.training  # back in training mode
    lora_model.eval()
    try:
        expected = [hf_greedy(lora_model, p, 20, eos) for p in prompts]
        with lora_model.disable_adapter():
            base = [hf_greedy(lora_model, p, 20, eos) for p in prompts]
    finally:
        lora_model.train()
    assert ours == expected  # the fine-tuned model's own output...
    assert ours != base  # ...not the base model's
    hooks = [m for m in lora_model.modules() if isinstance(m, torch.nn.Module) and m._forward_hooks]
    assert hooks == []  # nothing was left hooked into the model being trained
    assert not hasattr(lora_model, FALLBACK_ATTR)


def test_falls_back_to_model_generate_once_logged(demo_model_path, demo_tokenizer, prompts, monkeypatch):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(demo_model_path)
    expected = generate_completions(model, demo_tokenizer, prompts, max_new_tokens=10, temperature=0.0)
    calls = []

    def refuse(*args, **kwargs):
        calls.append(1)
        raise NotImplementedError("static cache not supported by this forward")

    monkeypatch.setattr(rollout, "_engine_generate", refuse)
    said: list[str] = []
    first = generate_completions(model, demo_tokenizer, prompts, max_new_tokens=10, temperature=0.0, log=said.append)
    again = generate_completions(model, demo_tokenizer, prompts, max_new_tokens=10, temperature=0.0, log=said.append)
    assert first == again == expected  # model.generate gives the same greedy rollouts
    assert len(said) == 1 and "static cache not supported" in said[0] and "model.generate" in said[0]
    assert calls == [1]  # the engine is not tried again for this model
    sampled = generate_completions(model, demo_tokenizer, [prompts[0]] * 3, max_new_tokens=10, temperature=1.0,
                                   seed=4, log=said.append)
    assert all(1 <= len(r) <= 10 for r in sampled) and len(said) == 1


def test_out_of_memory_is_raised_not_hidden(demo_model_path, demo_tokenizer, prompts, monkeypatch):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(demo_model_path)

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(rollout, "_engine_generate", oom)
    with pytest.raises(torch.OutOfMemoryError):
        generate_completions(model, demo_tokenizer, prompts, max_new_tokens=4, temperature=1.0)
    assert not hasattr(model, FALLBACK_ATTR)


def test_batch_size_chunks_give_the_same_greedy_rows(base_model, demo_tokenizer, prompts):
    whole = generate_completions(base_model, demo_tokenizer, prompts, max_new_tokens=10, temperature=0.0)
    assert generate_completions(base_model, demo_tokenizer, prompts, max_new_tokens=10, temperature=0.0,
                                batch_size=2) == whole


def test_an_engine_that_decodes_differently_is_not_trusted(demo_model_path, demo_tokenizer, prompts, monkeypatch):
    """A forward that ignores the cache or the mask raises nothing: the greedy check catches it."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(demo_model_path)
    expected = generate_completions(model, demo_tokenizer, prompts, max_new_tokens=6, temperature=0.0)
    model = AutoModelForCausalLM.from_pretrained(demo_model_path)  # a model not checked yet
    monkeypatch.setattr(rollout, "_engine_generate", lambda m, t, p, *a: [[5, 6, 7, 8] for _ in p])
    said: list[str] = []
    got = generate_completions(model, demo_tokenizer, prompts, max_new_tokens=6, temperature=0.0, log=said.append)
    assert got == expected
    assert len(said) == 1 and "differ from model.generate" in said[0] and "[5, 6, 7, 8]" in said[0]


def test_the_greedy_check_runs_once_per_model(demo_model_path, demo_tokenizer, prompts, monkeypatch):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(demo_model_path)
    checks = []
    real = rollout._engine_disagrees

    def spy(*args, **kwargs):
        checks.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(rollout, "_engine_disagrees", spy)
    for _ in range(3):
        generate_completions(model, demo_tokenizer, prompts, max_new_tokens=4, temperature=1.0)
    assert checks == [1] and getattr(model, rollout.CHECKED_ATTR) is True


def test_a_near_tie_in_the_greedy_check_is_not_a_disagreement(demo_model_path, demo_tokenizer, prompts,
                                                               monkeypatch):
    """Two correct decodes may break a near tie differently (bf16 logits, random-init weights): the
    check compares up to the first near tie and trusts the engine; a clear disagreement still fails."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(demo_model_path)
    theirs, scores = rollout._hf_greedy_with_scores(model, demo_tokenizer, prompts[0], None)
    assert len(theirs) == rollout.CHECK_TOKENS and len(scores) == rollout.CHECK_TOKENS
    runner_up = int(scores[1][0].topk(2).indices[1])
    forked = [theirs[0], runner_up, 5, 6]  # the same first token, then the runner-up
    monkeypatch.setattr(rollout, "_engine_generate", lambda m, t, p, *a: [list(forked) for _ in p])

    tie = list(scores)
    tie[1] = scores[1].clone()
    tie[1][0, runner_up] = tie[1][0, theirs[1]] - 1e-3
    monkeypatch.setattr(rollout, "_hf_greedy_with_scores", lambda *a: (theirs, tuple(tie)))
    assert rollout._engine_disagrees(model, demo_tokenizer, prompts[0], None) is None

    clear = list(scores)
    clear[1] = scores[1].clone()
    clear[1][0, runner_up] = tie[1][0, theirs[1]] - 5.0
    monkeypatch.setattr(rollout, "_hf_greedy_with_scores", lambda *a: (theirs, tuple(clear)))
    assert "differ from model.generate" in rollout._engine_disagrees(model, demo_tokenizer, prompts[0], None)
    assert torch.equal(scores[0], tie[0])
