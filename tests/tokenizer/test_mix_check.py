"""core.train.data.check_mix_tokenizer on manifests: same, re-measure, or refuse with the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.settings import ConfigError
from core.train.data import check_mix_tokenizer, length_decisions

QWEN3 = {"spec": "qwen3", "vocab_size": 151_669, "chat_template_sha256": "a" * 64, "render_sha256": "b" * 64}
DEMO = {"spec": "demo", "vocab_size": 1024, "chat_template_sha256": "c" * 64, "render_sha256": "d" * 64}


def manifest(tokenizer, drops=None, truncated=0):
    return {"tokenizer": tokenizer, "sources": [{"name": "s", "drops": drops or {}, "truncated": truncated}]}


def test_the_same_tokenizer_passes(tmp_path):
    assert check_mix_tokenizer(manifest(QWEN3, {"longer than max_seq_len": {"count": 9}}), dict(QWEN3),
                               tmp_path, "qwen3-8b") == "same"


def test_no_length_decision_or_no_record_is_remeasured(tmp_path):
    kept_all = manifest(DEMO, {"empty reply": {"count": 3}})
    assert check_mix_tokenizer(kept_all, QWEN3, tmp_path, "qwen3-8b") == "remeasure"
    assert check_mix_tokenizer({"sources": [{"drops": {"longer than max_seq_len": {"count": 2}}}]}, QWEN3,
                               tmp_path, "qwen3-8b") == "remeasure"


@pytest.mark.parametrize("drops, truncated, named", [
    ({"longer than max_seq_len": {"count": 7}}, 0, "longer than max_seq_len x7"),
    ({"shorter than min_tokens": {"count": 2}, "longer than max_tokens": {"count": 1}}, 0,
     "shorter than min_tokens x2"),
    ({}, 4, "truncated to max_seq_len x4"),
])
def test_decisions_made_with_another_tokenizer_are_refused_with_the_fix(tmp_path, monkeypatch, drops, truncated,
                                                                         named):
    for var, sub in (("QWENTUNE_MODELS_DIR", "models"), ("HF_HUB_CACHE", "hf"), ("MODELSCOPE_CACHE", "ms")):
        monkeypatch.setenv(var, str(tmp_path / sub))  # qwen3-8b is not downloaded here
    with pytest.raises(ConfigError) as err:
        check_mix_tokenizer(manifest(DEMO, drops, truncated), QWEN3, Path(tmp_path), "qwen3-8b")
    text = str(err.value)
    assert err.value.where == "data.mix_dir" and named in text
    assert "the demo tokenizer (1,024 tokens)" in text and "the Qwen3 tokenizer (151,669 tokens)" in text
    assert f"--tokenizer qwen3 --out {tmp_path} --force" in text and "Data tab" in text


def test_length_decisions_counts_per_reason_over_sources():
    m = {"sources": [{"drops": {"longer than max_seq_len": {"count": 2}, "bad row": {"count": 5}}},
                     {"drops": {"longer than max_seq_len": {"count": 3}}, "truncated": 1}, "junk"]}
    assert length_decisions(m) == {"longer than max_seq_len": 5, "truncated to max_seq_len": 1}


def test_describe_reads_a_tokenizer_recorded_as_text():
    # Hand-written or older manifests hold just a name or folder.
    from core.data.tokenizer import describe

    assert describe("qwen3") == "the Qwen3 tokenizer"
    assert describe("/models/x") == "the tokenizer of /models/x"
    assert describe({"spec": "qwen3", "vocab_size": 151669}) == "the Qwen3 tokenizer (151,669 tokens)"
