"""The Train tab's stage parts, called directly on fake run folders: the stage selector shows the rl
settings a stage reads, a grpo run shows reward per function, KL, completion length and its newest
sampled completions (escaped), a dpo / orpo run its chosen-vs-rejected margin and accuracy."""

from __future__ import annotations

import json

import pytest

from core.settings import write_json_atomic


@pytest.fixture
def ctx(tmp_path):
    from gui.app import AppContext

    return AppContext(runs_dir=tmp_path / "runs", demo=True, mixes_dir=tmp_path / "mixes")


def fake_run(root, name, stage, metrics, samples=None, *, status_stage=True):
    run = root / name
    run.mkdir(parents=True)
    status = {"state": "running", "pid": None, "step": len(metrics), "total_steps": 10, "model": "demo",
              "method": "lora"}
    if status_stage:
        status["stage"] = stage
    write_json_atomic(run / "status.json", dict(status, state="done"))
    (run / "config.yaml").write_text(f"name: {name}\ntrain:\n  stage: {stage}\n", encoding="utf-8")
    (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics), encoding="utf-8")
    if samples is not None:
        (run / "samples.jsonl").write_text(samples, encoding="utf-8")
    return run


def grpo_metrics(n=5):
    return [{"step": s, "loss": 0.01, "reward": 0.2 * s, "reward_std": 0.3, "rewards/answer/mean": 0.1 * s,
             "rewards/format/mean": 0.1 * s + 0.05, "rewards/reward_short/mean": 0.5, "kl": 0.001 * s,
             "completions/mean_length": 300 - 10 * s} for s in range(1, n + 1)]


def dpo_metrics(n=4):
    return [{"step": s, "loss": 0.69 - 0.05 * s, "rewards/chosen": 0.1 * s, "rewards/rejected": -0.1 * s,
             "rewards/margins": 0.2 * s, "rewards/accuracies": 0.5 + 0.1 * s} for s in range(1, n + 1)]


def sample_line(step, completion, **over):
    row = {"step": step, "prompt": "<|im_start|>user\nWhat is 6 * 7?<|im_end|>\n<|im_start|>assistant\n",
           "completion": completion, "rewards": {"answer": 1.0, "format": 0.5}, "answer": "42"}
    row.update(over)
    return json.dumps(row, ensure_ascii=False) + "\n"


# --------------------------------------------------------------------------------- the settings
@pytest.mark.parametrize("stage, shown", [
    ("sft", set()),
    ("dpo", {"rl.beta", "rl.max_prompt_len"}),
    ("orpo", {"rl.beta", "rl.max_prompt_len"}),
    ("grpo", {"rl.kl_beta", "rl.max_prompt_len", "rl.max_completion_len", "rl.num_generations",
              "rl.temperature", "rl.rewards", "rl.reward_file", "rl.rollout"}),
])
def test_the_stage_shows_only_the_rl_settings_it_reads(ctx, stage, shown):
    from core.train.live import STAGE_SETTINGS
    from gui.tabs import train

    vis = train.stage_visibility(stage)
    assert {p for p in STAGE_SETTINGS if vis[p]} == shown
    assert vis["section"] == bool(shown)
    section, *widgets = train.on_stage(ctx, stage)
    assert section["visible"] == bool(shown)
    assert [w["visible"] for w in widgets] == [p in shown for p in STAGE_SETTINGS]


def test_every_rl_setting_is_shown_by_some_stage():
    import dataclasses

    from core.config import RLConfig
    from core.train.live import STAGE_SETTINGS

    assert set(STAGE_SETTINGS) == {f"rl.{f.name}" for f in dataclasses.fields(RLConfig)}


def test_tab_registers_the_stage_and_rl_widgets_with_their_settings(ctx):
    import gradio as gr

    from core.choices import REWARDS, STAGES
    from core.config import RunConfig
    from core.settings import field_info
    from core.train.live import STAGE_SETTINGS
    from gui.tabs import train

    with gr.Blocks():
        train.build(ctx)
    fields = ctx.shared[train.TRAIN_FIELDS]
    infos = {f.path: f for f in field_info(RunConfig)}
    assert [c[1] if isinstance(c, tuple) else c for c in fields["train.stage"].choices] == list(STAGES)
    assert fields["train.stage"].value == "sft"
    for path in STAGE_SETTINGS:
        assert fields[path].value == infos[path].default, path
        assert fields[path].visible is False  # sft by default: none of them
    assert [c[1] if isinstance(c, tuple) else c for c in fields["rl.rewards"].choices] == list(REWARDS)
    assert fields["rl.rewards"].value == ["answer", "format"]
    assert fields["rl.num_generations"].minimum == 2


def test_the_form_carries_the_stage_and_rl_values_into_the_run_config(ctx, tmp_path):
    import gradio as gr

    from gui.tabs import train

    with gr.Blocks():
        train.build(ctx)
    values = {p: w.value for p, w in ctx.shared[train.TRAIN_FIELDS].items()}
    values.update({"data.mix_dir": str(tmp_path / "mix"), "train.stage": "grpo", "rl.num_generations": 8,
                   "rl.rewards": ["answer", "length"], "model.name_or_path": "demo"})
    cfg = train.config_from(ctx, [values[p] for p in train.field_paths(ctx)])
    assert cfg.train.stage == "grpo" and cfg.rl.num_generations == 8 and cfg.rl.rewards == ["answer", "length"]


def test_zh_page_labels_and_help_of_the_stage_settings(tmp_path):
    import gradio as gr

    from gui.app import AppContext
    from gui.tabs import train

    zh = AppContext(runs_dir=tmp_path / "runs", demo=True, lang="zh", mixes_dir=tmp_path / "mixes")
    with gr.Blocks():
        train.build(zh)
    fields = zh.shared[train.TRAIN_FIELDS]
    assert fields["train.stage"].label == "阶段" and "偏好" in fields["train.stage"].info
    assert fields["rl.num_generations"].label == "每个提示的生成数" and "同一组" in fields["rl.num_generations"].info


def test_loading_the_grpo_preset_sets_the_stage_and_rl_fields(ctx):
    from gui.presets import load_into

    paths = ["train.stage", "rl.rewards", "rl.num_generations", "rl.max_completion_len", "train.learning_rate"]
    message, *updates = load_into(ctx, paths, "qwen3-4b-grpo")
    assert "qwen3-4b-grpo" in message
    assert [u["value"] for u in updates] == ["grpo", ["answer", "format"], 4, 1536, pytest.approx(5e-6)]
    _msg, stage, beta = load_into(ctx, ["train.stage", "rl.beta"], "qwen3-8b-dpo")
    assert stage["value"] == "dpo" and beta["value"] == pytest.approx(0.1)


# -------------------------------------------------------------------------------- the live view
def test_grpo_run_shows_rewards_kl_length_and_the_newest_samples(ctx):
    from gui.tabs import train

    samples = (sample_line(4, "old step") + sample_line(5, "<think>\n6*7\n</think>\n\n<b>\\boxed{42}</b>")
               + sample_line(5, "<script>alert(1)</script>", rewards={"answer": 0.0, "format": 1.0}, answer=None)
               + "not json\n" + '{"step": "x"}\n' + '{"step": 5, "prompt": "torn')
    run = fake_run(ctx.runs_dir, "g1", "grpo", grpo_metrics(), samples)
    box, line, fig, page, seen = train.show_stage(ctx, str(run), {})
    assert box["visible"] is True
    assert "1.000" in line and "0.0050" in line and "250" in line  # the newest reward, KL and length
    names = [tr.name for tr in fig.data]
    assert names == ["reward (total)", "reward: answer", "reward: format", "reward: reward_short", "KL",
                     "completion length (tokens)"]
    kl = next(tr for tr in fig.data if tr.name == "KL")
    assert list(kl.x) == [1, 2, 3, 4, 5] and kl.y[-1] == pytest.approx(0.005)
    # The newest step's samples only, every string escaped.
    assert 'data-step="5"' in page and "old step" not in page
    assert page.count('class="train-sample"') == 2
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>" not in page
    assert "&lt;b&gt;\\boxed{42}&lt;/b&gt;" in page and "&lt;|im_start|&gt;user" in page
    assert "answer +1.00" in page and "format +0.50" in page and "reference answer: 42" in page
    assert "no reference answer" in page
    # An unchanged poll sends nothing; a new step of samples redraws.
    again = train.poll_stage(ctx, str(run), seen)
    assert all(isinstance(u, dict) and u.get("__type__") == "update" and len(u) == 1 for u in again[:4])
    with (run / "samples.jsonl").open("a", encoding="utf-8") as f:
        f.write("\n" + sample_line(6, "step six"))
    box, _line, _fig, page, _seen = train.poll_stage(ctx, str(run), again[-1])
    assert "step six" in page and 'data-step="6"' in page


def test_samples_panel_shows_at_most_four_and_cuts_long_text(ctx):
    from gui.tabs import train

    long_prompt = "p" * 5000 + " the question"
    samples = "".join(sample_line(2, f"completion {i} " + "x" * 9000, prompt=long_prompt) for i in range(7))
    run = fake_run(ctx.runs_dir, "g2", "grpo", grpo_metrics(2), samples)
    page = train.show_stage(ctx, str(run), {})[3]
    assert page.count('class="train-sample"') == 4
    assert "completion 6" in page and "completion 2" not in page  # the newest four of the step
    assert "the question" in page and "p" * 5000 not in page
    assert "x" * 9000 not in page and "…" in page


def test_grpo_run_without_samples_yet_says_so(ctx):
    from gui.tabs import train

    run = fake_run(ctx.runs_dir, "g3", "grpo", grpo_metrics(1))
    page = train.show_stage(ctx, str(run), {})[3]
    assert ctx.t("train.samples.none") in page


@pytest.mark.parametrize("stage", ["dpo", "orpo"])
def test_preference_run_shows_margin_and_accuracy(ctx, stage):
    from gui.tabs import train

    run = fake_run(ctx.runs_dir, f"p-{stage}", stage, dpo_metrics())
    box, line, fig, page, _seen = train.show_stage(ctx, str(run), {})
    assert box["visible"] is True and page == ""
    assert "0.800" in line and "90%" in line
    by_name = {tr.name: tr for tr in fig.data}
    assert set(by_name) == {"chosen − rejected margin", "chosen reward", "rejected reward",
                            "accuracy (chosen ranked first)"}
    assert list(by_name["chosen − rejected margin"].y) == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert by_name["accuracy (chosen ranked first)"].y[-1] == pytest.approx(0.9)


def test_sft_run_and_no_run_hide_the_stage_view(ctx, tmp_path):
    from gui.tabs import train

    run = fake_run(ctx.runs_dir, "s1", "sft", [{"step": 1, "loss": 1.0}])
    assert train.show_stage(ctx, str(run), {})[0]["visible"] is False
    assert train.show_stage(ctx, None, {})[0]["visible"] is False
    assert train.show_stage(ctx, str(tmp_path / "gone"), {})[0]["visible"] is False


def test_stage_read_from_metrics_when_status_has_none(ctx):
    from gui.tabs import train

    run = fake_run(ctx.runs_dir, "old", "grpo", grpo_metrics(2), status_stage=False)
    assert train.show_stage(ctx, str(run), {})[0]["visible"] is True


def test_zh_stage_view(tmp_path):
    from gui.app import AppContext
    from gui.tabs import train

    zh = AppContext(runs_dir=tmp_path / "runs", demo=True, lang="zh")
    run = fake_run(zh.runs_dir, "g", "grpo", grpo_metrics(2), sample_line(2, "好的"))
    _box, line, fig, page, _seen = train.show_stage(zh, str(run), {})
    assert "奖励" in line and "生成长度" in line
    assert "奖励：answer" in {tr.name for tr in fig.data}
    assert "采样回复 · 第 2 步" in page and "参考答案：42" in page and "好的" in page
