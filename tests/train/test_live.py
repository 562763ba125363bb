"""core.train.live: the stage a run shows, its reward names and series, and samples.jsonl's newest
step read from the end of a long file."""

from __future__ import annotations

import json

from core.train import live


def test_run_stage_from_status_then_metrics():
    assert live.run_stage({"stage": "orpo"}, []) == "orpo"
    assert live.run_stage({}, [{"step": 1, "rewards/answer/mean": 0.5}]) == "grpo"
    assert live.run_stage({"stage": None}, [{"step": 1, "rewards/margins": 0.1}]) == "dpo"
    assert live.run_stage({}, [{"step": 1, "loss": 1.0}]) == "sft"
    assert live.run_stage({"stage": "nonsense"}, []) == "sft"


def test_reward_names_and_series():
    rows = [{"step": 1, "rewards/answer/mean": 0.0, "rewards/answer/std": 0.1},
            {"step": 2, "rewards/answer/mean": 0.5, "rewards/my_len/mean": 1.0, "kl": True},
            {"step": 3, "loss": 0.2, "eval_loss": 0.3}, {"step": "x", "kl": 0.2}]
    assert live.reward_names(rows) == ["answer", "my_len"]
    assert live.series(rows, "rewards/answer/mean") == ([1, 2], [0.0, 0.5])
    assert live.series(rows, "kl") == ([], [])  # a bool or a row without a step is not a point
    assert live.latest(rows, "rewards/answer/mean") == 0.5 and live.latest(rows, "reward") is None


def test_settings_for_each_stage():
    assert live.settings_for("sft") == []
    assert live.settings_for("dpo") == ["rl.beta", "rl.max_prompt_len"]
    assert "rl.rewards" in live.settings_for("grpo") and "rl.beta" not in live.settings_for("grpo")


def test_read_samples_takes_the_newest_step_from_the_end_of_a_long_file(tmp_path):
    lines = [json.dumps({"step": s, "prompt": "p" * 500, "completion": f"c{s}-{i}", "rewards": {"answer": 1},
                         "answer": None}) for s in range(1, 400) for i in range(4)]
    (tmp_path / "samples.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert (tmp_path / "samples.jsonl").stat().st_size > live.SAMPLES_TAIL_BYTES
    got = live.read_samples(tmp_path, limit=3)
    assert [s["completion"] for s in got] == ["c399-1", "c399-2", "c399-3"]
    assert got[0]["rewards"] == {"answer": 1.0} and got[0]["answer"] is None


def test_read_samples_skips_what_is_not_a_sample(tmp_path):
    path = tmp_path / "samples.jsonl"
    assert live.read_samples(tmp_path) == []
    path.write_bytes(b'\xff\xfe\n[1, 2]\n{"step": 2, "completion": "ok", "rewards": {"a": "high", "b": 0.5}}\n'
                     b'{"step": 3, "completion": "torn')
    got = live.read_samples(tmp_path)
    assert got == [{"step": 2, "prompt": "", "completion": "ok", "rewards": {"b": 0.5}, "answer": None}]
    path.write_text('{"step": 1, "completion": "x", "rewards": {"answer": null, "format": 1}}\n', encoding="utf-8")
    assert live.read_samples(tmp_path)[0]["rewards"] == {"answer": None, "format": 1.0}
