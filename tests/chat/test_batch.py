"""Both panes in one batch: one forward pass per token for both, the base row still the plain base model."""

from __future__ import annotations

import pytest

from core.chat.engine import BatchRequest, ChatEngine
from core.chat.sampling import resolve
from tests.chat.fixtures import make_adapter

GREEDY = resolve(greedy=True, thinking=False, max_new_tokens=12)
QUESTIONS = ["What is the capital of France?", "用一句话介绍你自己。", "List three colours.",
             "Write one long sentence about the sea, the wind and the boats in the harbour."]


class ForwardCounter:
    """Counts forward passes of the transformers model under the PEFT wrapper, with their batch sizes."""

    def __init__(self, engine):
        self.model = engine.model.get_base_model()
        self.batches: list[int] = []

    def __enter__(self):
        self.handle = self.model.register_forward_pre_hook(
            lambda _m, _args, kwargs: self.batches.append(kwargs["input_ids"].shape[0]), with_kwargs=True)
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def msgs(q: str) -> list[dict]:
    return [{"role": "user", "content": q}]


def test_compare_runs_both_panes_in_one_forward_pass_per_token(peft_engine):
    assert peft_engine.mixed_batch and "one forward pass" in peft_engine.decode_info["batching"]
    with ForwardCounter(peft_engine) as fc:
        replies = peft_engine.compare(msgs(QUESTIONS[0]), GREEDY)
    steps = max(r.new_tokens for r in replies.values())
    assert fc.batches == [2] * steps  # prefill + one step per further token, both rows each time
    assert replies["base"].token_ids != replies["tuned"].token_ids


def test_mixed_batch_with_different_histories_keeps_the_base_row_clean(peft_engine, plain_engine):
    """The panes' histories differ (so their prompts differ in length and the batch is padded)."""
    base_hist = [*msgs("hi"), {"role": "assistant", "content": "Hello."}, *msgs(QUESTIONS[2])]
    tuned_hist = [*msgs("hi"), {"role": "assistant", "content": "Hello there, how can I help you today?"},
                  *msgs(QUESTIONS[2])]
    stream = peft_engine.compare_stream({"base": base_hist, "tuned": tuned_hist}, GREEDY)
    for _ in stream:
        pass
    replies = stream.replies()
    assert replies["base"].token_ids == plain_engine.generate("base", base_hist, GREEDY).token_ids
    assert replies["tuned"].token_ids == peft_engine.generate("tuned", tuned_hist, GREEDY).token_ids


def test_sampled_compare_uses_the_same_draws_as_a_single_pane(peft_engine, plain_engine):
    s = resolve(thinking=True, max_new_tokens=16, seed=11)
    replies = peft_engine.compare(msgs(QUESTIONS[1]), s)
    assert replies["base"].token_ids == plain_engine.generate("base", msgs(QUESTIONS[1]), s).token_ids
    assert replies["tuned"].token_ids == peft_engine.generate("tuned", msgs(QUESTIONS[1]), s).token_ids
    other = peft_engine.compare(msgs(QUESTIONS[1]), resolve(thinking=True, max_new_tokens=16, seed=12))
    assert other["base"].token_ids != replies["base"].token_ids  # another seed, other draws


def test_generate_batch_many_prompts_both_panes_equal_one_by_one(peft_engine, plain_engine):
    reqs = [BatchRequest(pane, msgs(q), GREEDY, group=i) for i, q in enumerate(QUESTIONS) for pane in ("base", "tuned")]
    seen = []
    with ForwardCounter(peft_engine) as fc:
        replies = peft_engine.generate_batch(reqs, batch_size=3, progress=lambda d, t: seen.append((d, t)))
    assert set(fc.batches) <= {6, 2}  # 3 prompts x 2 panes, then the last prompt's 2 panes
    assert seen[-1] == (len(reqs), len(reqs)) and len(seen) == len(reqs)
    for req, reply in zip(reqs, replies):
        assert reply.pane == req.pane
        one = (plain_engine if req.pane == "base" else peft_engine).generate(req.pane, req.messages, GREEDY)
        assert reply.token_ids == one.token_ids, (req.pane, req.messages[-1]["content"])


def test_until_ends_one_row_and_the_others_go_on(peft_engine):
    long = resolve(greedy=True, thinking=False, max_new_tokens=10)
    reqs = [BatchRequest("base", msgs(QUESTIONS[0]), long, group=0, until=lambda text: len(text) >= 3),
            BatchRequest("tuned", msgs(QUESTIONS[0]), long, group=0)]
    first, second = peft_engine.generate_batch(reqs)
    assert first.finish_reason == "until" and first.new_tokens < second.new_tokens


def test_a_batch_refuses_mixed_sampling_settings(peft_engine):
    reqs = [BatchRequest("base", msgs("a"), GREEDY, group=0),
            BatchRequest("tuned", msgs("a"), resolve(greedy=True, max_new_tokens=5), group=0)]
    replies = peft_engine.generate_batch(reqs)  # different settings: two batches, no error
    assert [r.pane for r in replies] == ["base", "tuned"]


@pytest.fixture(scope="module")
def dora_engine(demo_model_path, demo_tokenizer, tmp_path_factory):
    """An adapter that a per-row lora_B mask cannot remove (DoRA rescales the base weights)."""
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.mktemp("dora") / "adapter"
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(demo_model_path), LoraConfig(
        r=4, lora_alpha=8, init_lora_weights=False, use_dora=True, target_modules=["q_proj", "v_proj"]))
    model.save_pretrained(out)
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(demo_model_path), out)
    return ChatEngine(loaded, demo_tokenizer)


def test_dora_falls_back_to_a_separate_base_pass_and_stays_clean(dora_engine, plain_engine):
    assert not dora_engine.mixed_batch and "DoRA" in dora_engine.decode_info["batching"]
    replies = dora_engine.compare(msgs(QUESTIONS[0]), GREEDY)
    assert replies["base"].token_ids == plain_engine.generate("base", msgs(QUESTIONS[0]), GREEDY).token_ids
    assert replies["tuned"].token_ids != replies["base"].token_ids
    assert all(dora_engine._adapter_enabled())


def test_a_second_adapter_seed_still_changes_the_tuned_row(demo_model_path, demo_tokenizer, tmp_path, plain_engine):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter = make_adapter(demo_model_path, tmp_path / "a", seed=3, r=4)
    engine = ChatEngine(PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(demo_model_path), adapter),
                        demo_tokenizer)
    replies = engine.compare(msgs(QUESTIONS[3]), GREEDY)
    assert replies["base"].token_ids == plain_engine.generate("base", msgs(QUESTIONS[3]), GREEDY).token_ids
    assert replies["tuned"].token_ids != replies["base"].token_ids
