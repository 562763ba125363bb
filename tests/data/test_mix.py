"""Mix arithmetic (the Unsloth worked example), seeded reproducibility, the mix folder contract,
length policy, bad-input reports and the `mix` CLI."""

from __future__ import annotations

import hashlib
import io
import json
from contextlib import redirect_stdout
from pathlib import Path

import pytest

from core.config import MixConfig, SourceConfig
from core.data.mix import SourceCache, build_mix, check_mix_name, plan_counts
from core.data.mixdir import read_manifest, read_mix_dir
from core.data.sources import DataError
from core.settings import ConfigError
from tests.conftest import ROOT


# ---------------------------------------------------------------------------------- arithmetic
def test_worked_example_unsloth_recipe():
    counts, warnings = plan_counts([75, 25], [None, None], [19_252, 100_000])
    assert counts == [19_252, 6_417] and not warnings
    assert plan_counts([0.75, 0.25], [None, None], [19_252, 100_000])[0] == [19_252, 6_417]


def test_default_never_repeats_and_shrinks_to_the_scarcest_source():
    # chat is scarce here: 1,000 chat rows at 25% allow 3,000 reasoning rows.
    assert plan_counts([75, 25], [None, None], [19_252, 1_000])[0] == [3_000, 1_000]
    counts, _ = plan_counts([1, 1, 2], [None, None, None], [10, 1000, 1000])
    assert counts == [10, 10, 20]


def test_upsample_reaches_the_ratio_by_repetition():
    # Without total: the largest source is used once, the others repeat to their share.
    assert plan_counts([75, 25], [None, None], [19_252, 1_000], upsample=True)[0] == [19_252, 6_417]
    # With total: exactly total rows, split by ratio.
    assert plan_counts([75, 25], [None, None], [100, 10], upsample=True, total=1000)[0] == [750, 250]


def test_total_is_met_exactly_with_largest_remainder():
    counts, warnings = plan_counts([1, 1, 1], [None, None, None], [1000, 1000, 1000], total=100)
    assert sum(counts) == 100 and sorted(counts) == [33, 33, 34] and not warnings


def test_total_too_large_without_upsample_shrinks_and_warns():
    counts, warnings = plan_counts([50, 50], [None, None], [10, 1000], total=100, names=["a", "b"])
    assert counts == [10, 10]
    assert "a has only 10 usable rows" in warnings[0]


def test_counts_and_ratios_together():
    counts, _ = plan_counts([None, 3, 1], [50, None, None], [80, 1000, 1000], total=450)
    assert counts == [50, 300, 100]
    counts, warnings = plan_counts([None], [500], [80], names=["x"])
    assert counts == [80] and "count 500 asked but only 80" in warnings[0]
    assert plan_counts([None], [500], [80], upsample=True)[0] == [500]


def test_no_ratios_takes_everything_and_zero_ratio_excludes():
    assert plan_counts([None, None], [None, None], [5, 7])[0] == [5, 7]
    assert plan_counts([1, 0], [None, None], [5, 7])[0] == [5, 0]


def test_impossible_plans_are_clear_errors():
    with pytest.raises(DataError, match="add up to 0"):
        plan_counts([0, 0], [None, None], [5, 7])
    with pytest.raises(DataError, match="more than total"):
        plan_counts([None, 1], [50, None], [100, 100], total=10)
    with pytest.raises(DataError, match="no usable rows"):
        plan_counts([1, 1], [None, None], [0, 7], names=["a", "b"])


# --------------------------------------------------------------------------------------- build
def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def chat_rows(n, prefix="q"):
    return [{"conversations": [{"from": "human", "value": f"{prefix} {i}?"},
                               {"from": "gpt", "value": f"answer {i}"}]} for i in range(n)]


def reasoning_rows(n):
    return [{"problem": f"What is {i} + {i}?", "generated_solution": f"<think>\n{i} + {i} = {2 * i}\n</think>\n"
             f"The answer is \\boxed{{{2 * i}}}.", "expected_answer": str(2 * i)} for i in range(n)]


def folder_digest(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture()
def two_sources(tmp_path):
    r = write_jsonl(tmp_path / "reasoning.jsonl", reasoning_rows(30))
    c = write_jsonl(tmp_path / "chat.jsonl", chat_rows(100))
    return MixConfig(sources=[SourceConfig(path=str(r), ratio=75), SourceConfig(path=str(c), ratio=25)])


def test_build_mix_counts_and_folder_contract(demo_tokenizer, two_sources, tmp_path):
    result = build_mix(two_sources, demo_tokenizer, tmp_path / "mix")
    assert result.counts == {"reasoning": 30, "chat": 10} and result.total == 40
    train, evals, manifest = read_mix_dir(tmp_path / "mix")
    assert len(train) == 40 and evals == []
    assert {c.source for c in train} == {"reasoning", "chat"}
    assert all(c.meta.get("expected_answer") for c in train if c.source == "reasoning")
    assert (tmp_path / "mix" / "train.parquet").exists()
    src = manifest["sources"][0]
    digest = hashlib.sha256((tmp_path / "reasoning.jsonl").read_bytes()).hexdigest()
    assert src["source"]["files"][0]["sha256"] == digest
    assert src["ratio"] == 75 and src["share"] == 0.75
    assert manifest["seed"] == 3407 and manifest["max_seq_len"] == 2048
    assert manifest["counts"] == {"reasoning": 30, "chat": 10}
    assert manifest["tokenizer"]["vocab_size"] == len(demo_tokenizer)
    assert manifest["lengths"]["rows"] == 40
    row = json.loads((tmp_path / "mix" / "train.jsonl").read_text().splitlines()[0])
    assert set(row) == {"conversation", "text", "n_tokens", "source"}
    assert row["text"].startswith("<|im_start|>user\n")


def test_same_seed_same_folder_other_seed_other_order(demo_tokenizer, two_sources, tmp_path):
    build_mix(two_sources, demo_tokenizer, tmp_path / "a")
    build_mix(two_sources, demo_tokenizer, tmp_path / "b")
    assert folder_digest(tmp_path / "a") == folder_digest(tmp_path / "b")
    two_sources.seed = 1
    build_mix(two_sources, demo_tokenizer, tmp_path / "c")
    assert folder_digest(tmp_path / "a")["train.jsonl"] != folder_digest(tmp_path / "c")["train.jsonl"]


def test_save_refuses_to_clobber(demo_tokenizer, two_sources, tmp_path):
    build_mix(two_sources, demo_tokenizer, tmp_path / "m")
    with pytest.raises(DataError, match="already saved"):
        build_mix(two_sources, demo_tokenizer, tmp_path / "m")
    build_mix(two_sources, demo_tokenizer, tmp_path / "m", overwrite=True)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="not a saved mix"):
        build_mix(two_sources, demo_tokenizer, tmp_path / "other")
    assert (tmp_path / "other" / "keep.txt").read_text() == "mine"


def test_eval_split_never_shares_a_repeated_row(demo_tokenizer, tmp_path):
    src = write_jsonl(tmp_path / "few.jsonl", chat_rows(5))
    big = write_jsonl(tmp_path / "big.jsonl", chat_rows(50, "big"))
    cfg = MixConfig(sources=[SourceConfig(path=str(src), ratio=1), SourceConfig(path=str(big), ratio=1)],
                    upsample=True, eval_fraction=0.2)
    result = build_mix(cfg, demo_tokenizer)
    assert result.counts == {"few": 50, "big": 50}
    assert result.sources[0].repeated == 45
    assert len(result.eval_rows) == 20
    train_texts = {r["text"] for r in result.rows}
    assert not train_texts & {r["text"] for r in result.eval_rows}


def test_overlong_rows_dropped_or_truncated(demo_tokenizer, tmp_path):
    rows = chat_rows(10) + [{"conversations": [{"from": "human", "value": "long " * 300},
                                               {"from": "gpt", "value": "ok"}]}]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    cfg = MixConfig(sources=[SourceConfig(path=str(path))], max_seq_len=100)
    result = build_mix(cfg, demo_tokenizer)
    assert result.total == 10
    drop = result.drops["d"]["longer than max_seq_len"]
    assert drop["count"] == 1 and drop["examples"][0].split(": ")[0].endswith("d.jsonl:11")
    assert result.sources[0].length_stats["over_max"] == 1
    cfg.overlong = "truncate"
    result = build_mix(cfg, demo_tokenizer)
    assert result.total == 11 and result.sources[0].truncated == 1
    assert any("truncated" in w and "reasoning" in w for w in result.warnings)


def test_bad_rows_are_reported_by_reason_with_file_line(demo_tokenizer, tmp_path):
    good = json.dumps(chat_rows(1)[0])
    path = tmp_path / "mixed.jsonl"
    path.write_bytes("\n".join([
        good, "{not json", json.dumps({"conversations": [{"from": "human", "value": "Hi"}]}),
        json.dumps({"conversations": [{"from": "alien", "value": "x"}, {"from": "gpt", "value": "y"}]}),
        json.dumps({"instruction": "", "input": "", "output": "x"}), good]).encode() + b"\n\xff\xfe\n")
    result = build_mix(MixConfig(sources=[SourceConfig(path=str(path))]), demo_tokenizer)
    assert result.total == 2
    drops = result.drops["mixed"]
    assert {k: v["count"] for k, v in drops.items()} == {
        "malformed JSON": 1, "no assistant turn": 1, "unknown role": 1, "empty field": 1, "broken UTF-8": 1}
    assert drops["malformed JSON"]["examples"][0].split(": ")[0].endswith("mixed.jsonl:2")
    assert drops["broken UTF-8"]["examples"][0].split(": ")[0].endswith("mixed.jsonl:7")


def test_wrong_column_mapping_is_a_clear_error(demo_tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [{"instruction": "a", "input": "", "output": "b"}] * 3)
    cfg = MixConfig(sources=[SourceConfig(path=str(path), columns={"instruction": "question"})])
    with pytest.raises(DataError) as exc:
        build_mix(cfg, demo_tokenizer)
    msg = str(exc.value)
    assert "no usable rows" in msg and "'question'" in msg and "instruction, input, output" in msg


def test_source_config_errors_name_the_source(demo_tokenizer, tmp_path):
    cfg = MixConfig(sources=[SourceConfig(path="samples/chat_en"), SourceConfig(path=str(tmp_path / "missing.jsonl"))])
    with pytest.raises(ConfigError, match=r"sources\[1\].*not found"):
        build_mix(cfg, demo_tokenizer)


def test_cache_reuses_loaded_sources_and_notices_file_changes(demo_tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", chat_rows(10))
    cfg = MixConfig(sources=[SourceConfig(path=str(path), ratio=1)])
    cache = SourceCache()
    assert build_mix(cfg, demo_tokenizer, cache=cache).total == 10
    key = SourceCache.key(cfg.sources[0], "c", demo_tokenizer)
    assert cache.get(key) is not None
    write_jsonl(path, chat_rows(12))
    assert build_mix(cfg, demo_tokenizer, cache=cache).total == 12


def test_preset_reasoning75_chat25_builds(demo_tokenizer):
    from core.config import load_mix_config

    cfg = load_mix_config(ROOT / "presets" / "mixes" / "reasoning75_chat25.yaml")
    result = build_mix(cfg, demo_tokenizer)
    reasoning, chat = result.counts["reasoning"], result.counts["chat"]
    assert reasoning == result.sources[0].usable and chat == reasoning * 25 // 75


def test_mix_names():
    assert check_mix_name(" 数学 mix_1 ") == "数学 mix_1"
    for bad in ["", "../x", ".hidden", "a/b", "x" * 81]:
        with pytest.raises(ConfigError):
            check_mix_name(bad)


def test_cli_json_and_preview(tmp_path, two_sources):
    import yaml

    from core.cli import main
    from core.settings import to_dict

    cfg_path = tmp_path / "mix.yaml"
    cfg_path.write_text(yaml.safe_dump(to_dict(two_sources)))
    buf = io.StringIO()
    with redirect_stdout(buf):
        rc = main(["mix", str(cfg_path), "--out", str(tmp_path / "out"), "--json", "--seed", "7"])
    assert rc == 0
    data = json.loads(buf.getvalue())
    assert data["counts"] == {"reasoning": 30, "chat": 10} and data["total"] == 40
    assert data["drops"] == {"reasoning": {}, "chat": {}}
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["seed"] == 7
    buf = io.StringIO()
    with redirect_stdout(buf):
        assert main(["mix", str(cfg_path), "--dry-run", "--preview", "1"]) == 0
    assert "⟦" in buf.getvalue() and "total: 40 rows" in buf.getvalue()


def test_cli_errors_are_clear(tmp_path, capsys):
    from core.cli import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("sources:\n  - path: samples/chat_en\n    ratoi: 3\n")
    assert main(["mix", str(bad), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml:3" in err and "ratoi" in err
    assert main(["mix", str(bad)]) == 2


def test_trainer_call_shape_tokenizer_as_folder_path(demo_model_path, two_sources, tmp_path):
    """core.train.data calls build_mix(cfg.data.mix, str(tokenizer_path), mix_dir, overwrite=True)."""
    result = build_mix(two_sources, str(demo_model_path), tmp_path / "run" / "mix", overwrite=True)
    train, _evals, manifest = read_mix_dir(tmp_path / "run" / "mix")
    assert len(train) == result.total == 40 and manifest["tokenizer"]["spec"] == str(demo_model_path)


def test_hub_source_through_the_mocked_boundary(demo_tokenizer):
    rows = chat_rows(30)

    def fake_hf(dataset, subset, split, limit):
        assert (dataset, split, limit) == ("mlabonne/FineTome-100k", "train", 20)
        return iter(rows), "0123abcd"

    cfg = MixConfig(sources=[SourceConfig(path="samples/math_reasoning", ratio=75),
                             SourceConfig(path="mlabonne/FineTome-100k", hub="hf", limit=20, ratio=25)])
    result = build_mix(cfg, demo_tokenizer, loaders={"hf": fake_hf})
    hub = result.manifest()["sources"][1]
    assert hub["name"] == "FineTome-100k" and hub["source"]["revision"] == "0123abcd"
    assert hub["rows_read"] == 20 and result.counts["FineTome-100k"] == 13


# ------------------------------------------------------------------- reasoning turns, the trainer
MULTI_TURN = {"messages": [
    {"role": "user", "content": "Q1"}, {"role": "assistant", "reasoning_content": "r1", "content": "A1"},
    {"role": "user", "content": "Q2"}, {"role": "assistant", "reasoning_content": "r2", "content": "A2"}]}


@pytest.mark.parametrize("mode,rows", [("last_only", 1), ("split", 2), ("mask_earlier", 1)])
def test_reasoning_turns_reach_the_trainer_through_the_mix_folder(tmp_path, demo_tokenizer, mode, rows):
    from core.config import TrainConfig
    from core.train.data import tokenize

    src = tmp_path / "multi.jsonl"
    src.write_text(json.dumps(MULTI_TURN) + "\n", encoding="utf-8")
    cfg = MixConfig(sources=[SourceConfig(path=str(src))], reasoning_turns=mode)
    build_mix(cfg, demo_tokenizer, tmp_path / "mix")
    train, _evals, manifest = read_mix_dir(tmp_path / "mix")
    assert len(train) == rows and manifest["reasoning_turns"] == mode
    tok = tokenize(train, demo_tokenizer, TrainConfig())
    trained = sorted(demo_tokenizer.decode([i for i, m in zip(ids, mask) if m])
                     for ids, mask in zip(tok.input_ids, tok.masks))
    expected = {
        "last_only": ["A1<|im_end|><think>\nr2\n</think>\n\nA2<|im_end|>"],
        "split": ["<think>\nr1\n</think>\n\nA1<|im_end|>", "<think>\nr2\n</think>\n\nA2<|im_end|>"],
        "mask_earlier": ["<think>\nr2\n</think>\n\nA2<|im_end|>"],
    }[mode]
    assert trained == expected


def test_a_missing_or_damaged_manifest_names_the_mix_setting_and_file(tmp_path):
    folder = tmp_path / "mix"
    folder.mkdir()
    with pytest.raises(ConfigError, match="not a saved mix folder") as err:
        read_manifest(folder)
    assert err.value.where == "data.mix_dir"
    for text, why in (('{"seed": 1,', "not valid JSON"), ("[1]", "expected a JSON object")):
        (folder / "manifest.json").write_text(text, encoding="utf-8")
        with pytest.raises(ConfigError) as err:
            read_mix_dir(folder)
        assert err.value.where == "data.mix_dir" and err.value.source == str(folder / "manifest.json")
        assert why in str(err.value) and str(folder / "manifest.json") in str(err.value)
    (folder / "manifest.json").write_bytes(b'{"seed": "\xff"}')
    with pytest.raises(ConfigError, match="not UTF-8"):
        read_manifest(folder)
