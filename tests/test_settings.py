"""The settings mechanism: one declaration -> YAML, CLI flags and errors that name the field."""

from __future__ import annotations

import argparse

import pytest

from core.config import MixConfig, RunConfig
from core.settings import (
    ConfigError,
    add_cli_flags,
    cli_overrides,
    deep_merge,
    field_info,
    from_dict,
    load_yaml,
)


def test_every_setting_has_help():
    for cls in (RunConfig, MixConfig):
        for info in field_info(cls):
            assert info.help.strip(), info.path


def test_unknown_key_names_path_file_and_line(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  name_or_path: demo\nlora:\n  r: 8\n  rnak: 4\ndata:\n  mix_dir: m\n")
    with pytest.raises(ConfigError) as err:
        load_yaml(RunConfig, path)
    assert err.value.where == "lora.rnak"
    assert err.value.source == f"{path}:5"
    assert "did you mean 'r'" not in str(err.value) or "rnak" in str(err.value)


def test_wrong_type_and_bounds(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  micro_batch: two\ndata:\n  mix_dir: m\n")
    with pytest.raises(ConfigError, match=r"train\.micro_batch: expected a whole number"):
        load_yaml(RunConfig, path)
    path.write_text("train:\n  micro_batch: 0\ndata:\n  mix_dir: m\n")
    with pytest.raises(ConfigError, match=r":2: train\.micro_batch: must be at least 1"):
        load_yaml(RunConfig, path)
    path.write_text("model:\n  method: full\ndata:\n  mix_dir: m\n")
    with pytest.raises(ConfigError, match=r"model\.method: must be one of|not one of"):
        load_yaml(RunConfig, path)


def test_yaml_syntax_error_names_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  name_or_path: [demo\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml:\d+: invalid YAML"):
        load_yaml(RunConfig, path)


def test_validate_runs_on_nested_and_floats_from_strings():
    cfg = from_dict(RunConfig, {"train": {"learning_rate": "2e-4"}, "data": {"mix_dir": "x"}})
    assert cfg.train.learning_rate == pytest.approx(2e-4)
    with pytest.raises(ConfigError, match="data.mix_dir"):
        from_dict(RunConfig, {})


def test_nested_list_of_dataclasses_errors_have_index():
    with pytest.raises(ConfigError) as err:
        from_dict(MixConfig, {"sources": [{"path": "a", "ratio": 0.5}, {"path": "b", "ratoi": 1}]})
    assert err.value.where == "sources[1].ratoi"


def test_cli_flags_override_yaml_values():
    parser = argparse.ArgumentParser()
    add_cli_flags(parser, RunConfig)
    args = parser.parse_args(["--lora.r", "8", "--train.assistant-only-loss", "false",
                              "--lora.target-modules", "[q_proj, v_proj]"])
    merged = deep_merge({"lora": {"r": 32, "alpha": 16}, "data": {"mix_dir": "m"}}, cli_overrides(args))
    cfg = from_dict(RunConfig, merged)
    assert cfg.lora.r == 8 and cfg.lora.alpha == 16
    assert cfg.train.assistant_only_loss is False
    assert cfg.lora.target_modules == ["q_proj", "v_proj"]


def test_cli_help_shows_every_setting_even_with_a_percent_sign_in_its_help():
    parser = argparse.ArgumentParser()
    add_cli_flags(parser, RunConfig)
    text = parser.format_help()  # argparse %-formats help strings: a bare "10%" used to raise here
    assert "10% of it left free" in text and "--rl.reward-file" in text
