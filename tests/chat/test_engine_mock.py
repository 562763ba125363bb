"""The engine with a mock model and a byte tokenizer (no real model), in the spirit of nanochat's tests."""

from __future__ import annotations

import threading

import pytest

from core.chat.engine import ChatEngine, IncrementalDecoder
from core.chat.sampling import resolve
from tests.chat.mocks import IM_END, ByteTokenizer, ScriptLM, UniformLM

PROMPT = list(b"<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n")


def engine(model=None, **kw) -> ChatEngine:
    return ChatEngine(model or UniformLM(), ByteTokenizer(), **kw)


def test_same_seed_same_tokens_and_seeds_vary():
    e = engine()
    s = {seed: resolve(temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=8, seed=seed) for seed in (1, 2, 3)}
    runs = {seed: e.generate_ids("base", PROMPT, s[seed]) for seed in s}
    assert e.generate_ids("base", PROMPT, s[1]) == runs[1]
    assert len({tuple(r) for r in runs.values()}) > 1


def test_greedy_ignores_the_seed():
    e = engine(ScriptLM(lambda prompt: "fixed reply"))
    outs = {tuple(e.generate_ids("base", PROMPT, resolve(greedy=True, seed=seed))) for seed in (1, 2, 3)}
    assert outs == {tuple(b"fixed reply")}


def test_max_new_tokens_and_finish_reasons():
    e = engine()
    for n in (1, 5, 17):
        s = resolve(temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=n)
        assert len(e.generate_ids("base", PROMPT, s)) <= n
    reply = engine(ScriptLM(lambda p: "ok")).generate("base", [{"role": "user", "content": "hi"}], resolve())
    assert reply.finish_reason == "stop" and reply.answer == "ok" and reply.new_tokens == 2
    reply = engine(ScriptLM(lambda p: "a long reply")).generate(
        "base", [{"role": "user", "content": "hi"}], resolve(max_new_tokens=3))
    assert reply.finish_reason == "length" and reply.text == "a l"


def test_kv_cache_prefill_then_one_token_per_step():
    model = UniformLM()
    e = engine(model)
    e.generate_ids("base", PROMPT, resolve(temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=4))
    assert model.calls[0] == (len(PROMPT), 0)
    assert [c[0] for c in model.calls[1:]] == [1] * (len(model.calls) - 1)
    assert [c[1] for c in model.calls[1:]] == list(range(len(PROMPT), len(PROMPT) + len(model.calls) - 1))


def test_stop_token_never_reaches_the_text():
    e = engine(ScriptLM(lambda p: "done"))
    ids = e.generate_ids("base", PROMPT, resolve())
    assert IM_END not in ids and bytes(ids) == b"done"


def test_streaming_pieces_rebuild_the_text_and_never_split_a_character():
    text = "<think>\n想一想\n</think>\n\n答案是 42 ✓"
    e = engine(ScriptLM(lambda p: text))
    gen = e.stream("base", [{"role": "user", "content": "q"}], resolve(thinking=True))
    pieces = list(gen)
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == text == gen.reply.text
    assert gen.reply.reasoning == "想一想" and gen.reply.answer == "答案是 42 ✓"


def test_incremental_decoder_holds_back_partial_utf8():
    dec = IncrementalDecoder(ByteTokenizer())
    out = [dec.push(b) for b in "é".encode()]
    assert out == ["", "é"]


def test_until_stops_early():
    e = engine(ScriptLM(lambda p: "abcdefghij"))
    reply = e.generate("base", [{"role": "user", "content": "q"}], resolve(), until=lambda t: "d" in t)
    assert reply.finish_reason == "until" and reply.text == "abcd"


def test_only_base_pane_without_a_fine_tune():
    e = engine()
    assert e.panes == ("base",)
    with pytest.raises(ValueError, match="no fine-tuned model"):
        e.generate("tuned", [{"role": "user", "content": "q"}], resolve())


def test_two_models_both_panes_and_compare_interleaves():
    base, tuned = ScriptLM(lambda p: "base says hi"), ScriptLM(lambda p: "tuned says hi")
    e = engine(base, tuned_model=tuned)
    assert e.panes == ("base", "tuned")
    stream = e.compare_stream({"base": [{"role": "user", "content": "q"}],
                               "tuned": [{"role": "user", "content": "q"}]}, resolve(greedy=True))
    order = [pane for pane, piece in stream if piece]
    assert order[:6] == ["base", "tuned"] * 3  # panes alternate piece by piece
    replies = stream.replies()
    assert replies["base"].answer == "base says hi" and replies["tuned"].answer == "tuned says hi"


def test_forward_passes_never_overlap_across_threads():
    model = UniformLM(forward_delay=0.002)
    e = engine(model)
    s = resolve(temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=15)
    threads = [threading.Thread(target=e.generate_ids, args=("base", PROMPT, s)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert model.overlaps == 0 and len(model.calls) == 45


def test_token_nll_uniform_is_log_vocab():
    import math

    e = engine(UniformLM())
    ids = list(b"abcdef")
    mask = [0, 0, 1, 1, 1, 0]
    (nll, n), = e.token_nll("base", [(ids, mask)])
    assert n == 3 and nll == pytest.approx(3 * math.log(258), rel=1e-6)


def test_token_nll_matches_closed_form_with_padding():
    import math

    cheat = 3.0
    e = engine(ScriptLM(lambda p: "", cheat=cheat))
    rows = [(list(b"hello world"), [0] * 3 + [1] * 8), (list(b"hi"), [0, 1]), (list(b"abc"), [0, 0, 0])]
    res = e.token_nll("base", rows, batch_size=2)
    per_token = -math.log(math.exp(cheat) / (math.exp(cheat) + 257))
    assert res[0] == (pytest.approx(8 * per_token, rel=1e-5), 8)
    assert res[1] == (pytest.approx(per_token, rel=1e-5), 1)
    assert res[2] == (0.0, 0)


def test_presence_penalty_on_the_device_lowers_tokens_already_generated():
    e = engine(UniformLM())
    s = resolve(greedy=True, presence_penalty=2.0, max_new_tokens=5)
    assert e.generate_ids("base", PROMPT, s) == [0, 1, 2, 3, 4]  # each token, once seen, loses to the next
    assert e.generate_ids("base", PROMPT, resolve(greedy=True, max_new_tokens=3)) == [0, 0, 0]
