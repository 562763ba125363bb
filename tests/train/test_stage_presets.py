"""The shipped stage presets pass the pre-run check on a mix of the kind their stage reads."""

from __future__ import annotations

import pytest

from core.settings import write_json_atomic

STAGE_PRESETS = {"qwen3-4b-grpo-format-sft": ("sft", "sft"), "qwen3-4b-grpo": ("grpo", "prompt"),
                 "qwen3-8b-dpo": ("dpo", "preference")}


@pytest.mark.parametrize("name", list(STAGE_PRESETS))
def test_stage_preset_passes_the_pre_run_check(name, tmp_path):
    from core.config import RunConfig
    from core.presets import PRESETS_DIR, load_preset, unflatten
    from core.settings import from_dict
    from core.train.validate import check_run, errors

    stage, kind = STAGE_PRESETS[name]
    mix = tmp_path / "mix"
    mix.mkdir()
    write_json_atomic(mix / "manifest.json", {"kind": kind, "train_rows": 2000, "eval_rows": 0, "max_seq_len": 2048})
    values = load_preset(PRESETS_DIR / f"{name}.yaml")
    values["data.mix_dir"] = str(mix)
    cfg = from_dict(RunConfig, unflatten(values))
    assert cfg.train.stage == stage
    assert errors(check_run(cfg)) == []


def test_grpo_preset_rewards_build():
    from core.config import RunConfig
    from core.presets import PRESETS_DIR, load_preset, unflatten
    from core.settings import from_dict
    from core.train.rewards import build_rewards

    values = load_preset(PRESETS_DIR / "qwen3-4b-grpo.yaml")
    values["data.mix_dir"] = "unused"
    cfg = from_dict(RunConfig, unflatten(values))
    assert [f.__name__ for f in build_rewards(cfg.rl)] == ["answer", "format"]
    assert cfg.rl.max_prompt_len + cfg.rl.max_completion_len == cfg.train.max_seq_len
