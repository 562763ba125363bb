"""The stages after SFT on the CPU with the demo model: DPO widens the chosen-vs-rejected margin, ORPO's
loss falls, GRPO raises a verifiable reward, stop / resume keep the step count, and the pre-run check
names the setting that must change. Each run goes through the worker, as `python -m core train` does."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from core.train import runs
from tests.train.conftest import FACTS

WRONG = ["I am not sure about that.", "Nobody knows the answer.", "That cannot be answered.", "Ask someone else."]


def write_preference_mix(folder: Path, rows=FACTS, eval_rows=FACTS[:2]) -> Path:
    from core.data.conversation import Conversation, Message
    from core.data.mixdir import write_mix_dir

    def shape(pairs, tag):
        out = []
        for i, (q, a) in enumerate(pairs):
            c = Conversation([Message("user", q), Message("assistant", a)], source="facts", origin=f"{tag}:{i}",
                             rejected=Message("assistant", WRONG[i % len(WRONG)]))
            out.append({"conversation": c.to_json(), "text": "", "n_tokens": 0, "source": "facts"})
        return out

    return write_mix_dir(folder, shape(rows, "train"), shape(eval_rows, "eval"),
                         {"kind": "preference", "sources": [{"name": "facts"}]})


def write_prompt_mix(folder: Path, n: int = 8) -> Path:
    from core.data.conversation import Conversation, Message
    from core.data.mixdir import write_mix_dir

    rows = []
    for i in range(n):
        q, _ = FACTS[i % len(FACTS)]
        c = Conversation([Message("user", q)], source="toy", origin=f"train:{i}", meta={"expected_answer": "4"})
        rows.append({"conversation": c.to_json(), "text": "", "n_tokens": 0, "source": "toy"})
    return write_mix_dir(folder, rows, [], {"kind": "prompt", "sources": [{"name": "toy"}]})


# A verifiable reward the tiny random model can learn in a few steps: the share of the reply's
# characters that are lowercase ASCII letters (its random start emits bytes, CJK pieces and
# punctuation too, so the four completions of a prompt score differently from the first step).
LETTERS_REWARD = '''
def reward_letters(prompts, completions, answer, **kwargs):
    return [sum("a" <= ch <= "z" for ch in c) / max(1, len(c)) for c in completions]
'''


def stage_config(model, mix: Path, runs_dir: Path, name: str, stage: str, rl=None, **train):
    from tests.train.conftest import run_config

    settings = {"stage": stage, "max_steps": 12, "max_seq_len": 128, "save_steps": 6, "logging_steps": 1,
                "eval_steps": 0, **train}
    return run_config(model, mix, runs_dir, name, rl={"max_prompt_len": 64, **(rl or {})}, **settings)


def train(cfg, *, resume: bool = False) -> int:
    from core.train import worker

    os.environ["QWENTUNE_LOG_REDIRECTED"] = "1"  # no tee of the test process's own stdout
    try:
        return worker.run(cfg, resume=resume)
    finally:
        os.environ.pop("QWENTUNE_LOG_REDIRECTED", None)


def run_dir(cfg) -> Path:
    return Path(cfg.runs_dir) / cfg.name


def train_rows(cfg) -> list[dict]:
    return [m for m in runs.read_metrics(run_dir(cfg)) if m.get("loss") is not None]


@pytest.fixture(scope="module")
def preference_mix(tmp_path_factory) -> Path:
    return write_preference_mix(tmp_path_factory.mktemp("mixes") / "pref")


@pytest.fixture(scope="module")
def prompt_mix(tmp_path_factory) -> Path:
    return write_prompt_mix(tmp_path_factory.mktemp("mixes") / "prompts")


@pytest.fixture(scope="module")
def letters_reward(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("rewards") / "letters.py"
    path.write_text(LETTERS_REWARD, encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------- rows
def test_preference_rows_are_the_sft_rendering(demo_tokenizer, preference_mix, tmp_path, demo_model_path):
    from core.data.mixdir import read_mix_dir
    from core.data.render import render_batch
    from core.train.stages import preference_rows

    cfg = stage_config(demo_model_path, preference_mix, tmp_path, "rows", "dpo")
    convs, _, _ = read_mix_dir(preference_mix)
    rows = preference_rows(convs, demo_tokenizer, cfg)
    assert rows.rows == 4 and rows.no_target == 0 and rows.too_long == 0
    sft = render_batch(convs, demo_tokenizer)
    newline = demo_tokenizer("\n", add_special_tokens=False)["input_ids"]
    for i, r in enumerate(sft):
        # the SFT rendering, token for token, up to the reply's <|im_end|> (the newline after it is
        # the template's separator, which SFT never trains either)
        assert rows.columns["prompt_ids"][i] + rows.columns["chosen_ids"][i] + newline == r.input_ids
        assert demo_tokenizer.decode(rows.columns["chosen_ids"][i]) == FACTS[i][1] + "<|im_end|>"
        trained = [t for t, m in zip(r.input_ids, r.mask) if m]
        assert trained[-len(rows.columns["chosen_ids"][i]):] == rows.columns["chosen_ids"][i]
    end = demo_tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert all(ids.count(end) == 1 for ids in rows.columns["rejected_ids"])


def test_rows_that_do_not_fit_are_counted_not_cut(demo_tokenizer, preference_mix, tmp_path, demo_model_path):
    from core.data.mixdir import read_mix_dir
    from core.train.stages import preference_rows

    cfg = stage_config(demo_model_path, preference_mix, tmp_path, "rows", "dpo", max_seq_len=24)
    convs, _, _ = read_mix_dir(preference_mix)
    rows = preference_rows(convs, demo_tokenizer, cfg)
    assert rows.rows + rows.too_long == 4 and rows.too_long > 0
    assert all(len(p) + max(len(c), len(r)) <= 24 for p, c, r in
               zip(rows.columns["prompt_ids"], rows.columns["chosen_ids"], rows.columns["rejected_ids"]))


def test_prompt_rows_carry_the_answer(demo_tokenizer, prompt_mix, tmp_path, demo_model_path):
    from core.data.mixdir import read_mix_dir
    from core.train.stages import prompt_rows

    cfg = stage_config(demo_model_path, prompt_mix, tmp_path, "rows", "grpo")
    convs, _, _ = read_mix_dir(prompt_mix)
    rows = prompt_rows(convs, demo_tokenizer, cfg)
    assert rows.rows == 8 and set(rows.columns["answer"]) == {"4"}
    assert all(p.endswith("<|im_start|>assistant\n") for p in rows.columns["prompt"])
    assert "prompt_ids" not in rows.dataset().column_names  # TRL tokenizes the text itself


# ------------------------------------------------------------------------------------- training
@pytest.mark.slow
def test_dpo_raises_the_chosen_vs_rejected_margin(demo_model_path, preference_mix, tmp_path):
    cfg = stage_config(demo_model_path, preference_mix, tmp_path / "runs", "dpo", "dpo", rl={"beta": 0.1})
    assert train(cfg) == 0
    rows = train_rows(cfg)
    assert len(rows) == 12
    margins = [r["rewards/margins"] for r in rows]
    # Step 1 sees the policy equal to the reference (the LoRA starts at zero): no margin yet.
    assert abs(margins[0]) < 1e-4, margins
    # measured on three demo model builds: 5.9-6.4 at step 12
    assert margins[-1] > 1.0 and rows[-1]["rewards/accuracies"] == 1.0, margins
    assert rows[-1]["loss"] < rows[0]["loss"] / 2
    for key in ("rewards/chosen", "rewards/rejected", "logps/chosen", "logps/rejected", "tokens_per_s"):
        assert key in rows[-1], key
    st = runs.read_status(run_dir(cfg))
    assert st["state"] == "done" and st["stage"] == "dpo" and st["step"] == 12
    # the mix's eval rows are evaluated at the end, with DPO's own eval metrics
    evals = [m for m in runs.read_metrics(run_dir(cfg)) if m.get("eval_loss") is not None]
    assert st["eval_loss"] is not None and evals and "eval_rewards/margins" in evals[-1]
    assert st["data"]["stage"] == "dpo" and st["data"]["rows"] == 4
    assert st["tokens"] > 0
    adapter = run_dir(cfg) / "adapter"
    assert (adapter / "adapter_config.json").is_file() and not (adapter / "ref").exists()


@pytest.mark.slow
def test_orpo_loss_falls(demo_model_path, preference_mix, tmp_path):
    cfg = stage_config(demo_model_path, preference_mix, tmp_path / "runs", "orpo", "orpo", rl={"beta": 0.1})
    assert train(cfg) == 0
    rows = train_rows(cfg)
    assert len(rows) == 12
    # measured on three demo model builds: 7.9-8.2 at step 1, 4.1-4.5 at step 12
    assert rows[-1]["loss"] < rows[0]["loss"] * 0.7, [r["loss"] for r in rows]
    assert rows[-1]["rewards/margins"] > rows[0]["rewards/margins"]
    assert "nll_loss" in rows[-1] and "log_odds_ratio" in rows[-1]
    assert runs.read_status(run_dir(cfg))["state"] == "done"


@pytest.mark.slow
def test_grpo_raises_a_verifiable_reward(demo_model_path, prompt_mix, letters_reward, tmp_path):
    cfg = stage_config(demo_model_path, prompt_mix, tmp_path / "runs", "grpo", "grpo", max_steps=32,
                       learning_rate=1e-1, micro_batch=8,
                       rl={"rewards": [], "reward_file": str(letters_reward), "num_generations": 4,
                           "max_completion_len": 16, "temperature": 1.0})
    assert train(cfg) == 0
    rows = train_rows(cfg)
    assert len(rows) == 32
    # Seeded. The reward climbs after a plateau whose length depends on the demo model's build (its
    # weights change with the shipped sample data) and the seed: one build reached 0.94-1.0 by step
    # 14, another was still at 0.77 there. Over 32 steps, eight seeds on that second build: step 1
    # (the untrained model's rollouts) 0.57-0.69, the last three steps 0.80-1.0 on average, each at
    # least 0.23 above its first step.
    scores = [round(r["rewards/reward_letters/mean"], 3) for r in rows]
    first, last = scores[0], sum(scores[-3:]) / 3
    assert first < 0.7 and last > first + 0.2, scores
    assert rows[-1]["reward"] == pytest.approx(rows[-1]["rewards/reward_letters/mean"])
    for key in ("reward", "reward_std", "completions/mean_length"):
        assert key in rows[-1], key
    samples = runs.RunFolder(run_dir(cfg)).read_samples()
    assert samples and {"step", "prompt", "completion", "rewards", "answer"} <= set(samples[0])
    assert samples[0]["answer"] == "4" and "reward_letters" in samples[0]["rewards"]
    assert len([s for s in samples if s["step"] == 1]) <= 4
    st = runs.read_status(run_dir(cfg))
    assert st["state"] == "done" and st["stage"] == "grpo" and st["tokens"] > 0


# ------------------------------------------------------------------------------- stop / resume
def _stop_when(cfg, step: int):
    """Write the stop file once metrics.jsonl reaches ``step``."""
    folder = runs.RunFolder(run_dir(cfg))

    def watch():
        deadline = time.time() + 120
        while time.time() < deadline:
            if any(m.get("step", 0) >= step for m in folder.read_metrics()):
                folder.stop_flag.write_text("test\n")
                return
            time.sleep(0.05)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["dpo", "grpo"])
def test_stop_then_resume_keeps_the_step_count(stage, demo_model_path, preference_mix, prompt_mix, letters_reward,
                                               tmp_path, monkeypatch):
    mix = preference_mix if stage == "dpo" else prompt_mix
    rl = {} if stage == "dpo" else {"rewards": [], "reward_file": str(letters_reward), "max_completion_len": 8}
    cfg = stage_config(demo_model_path, mix, tmp_path / "runs", f"stop-{stage}", stage, rl=rl, max_steps=8,
                       save_steps=4)
    monkeypatch.setenv("QWENTUNE_STEP_DELAY_S", "0.3")
    _stop_when(cfg, 2)
    assert train(cfg) == 0
    st = runs.read_status(run_dir(cfg))
    assert st["state"] == "stopped" and st["resumable"] and 2 <= st["step"] < 8, st
    stopped_at = st["step"]
    assert runs.RunFolder(run_dir(cfg)).latest_checkpoint().step == stopped_at
    monkeypatch.delenv("QWENTUNE_STEP_DELAY_S")
    assert train(cfg, resume=True) == 0
    st = runs.read_status(run_dir(cfg))
    assert st["state"] == "done" and st["step"] == 8 and st["resumed_from"] == f"checkpoint-{stopped_at}"
    steps = [m["step"] for m in train_rows(cfg)]
    assert steps == list(range(1, 9)), steps  # one line per step, none lost or repeated
    assert (run_dir(cfg) / "adapter" / "adapter_model.safetensors").is_file()


# ----------------------------------------------------------------------------------- the check
def test_a_dpo_run_on_an_sft_mix_names_the_mix_and_the_stage(demo_model_path, facts_mix, tmp_path):
    from core.train.validate import check_run, errors

    cfg = stage_config(demo_model_path, facts_mix, tmp_path, "bad", "dpo")
    problems = errors(check_run(cfg))
    assert [p.code for p in problems] == ["stage_mix_kind"]
    assert problems[0].setting == "train.stage"
    assert "data.mix_dir" in problems[0].message and str(facts_mix) in problems[0].message
    assert "preference" in problems[0].message and "dpo" in problems[0].message


def test_the_worker_refuses_a_stage_its_mix_cannot_train(demo_model_path, facts_mix, tmp_path):
    cfg = stage_config(demo_model_path, facts_mix, tmp_path / "runs", "bad-worker", "grpo",
                       rl={"rewards": ["answer"]})
    assert train(cfg) == 2
    st = runs.read_status(run_dir(cfg))
    assert st["state"] == "failed" and st["error_kind"] == "config"
    assert "train.stage grpo" in st["error"] and "prompt" in st["error"]


def test_grpo_checks_name_the_settings(demo_model_path, prompt_mix, tmp_path):
    from core.train.validate import check_run, errors

    cfg = stage_config(demo_model_path, prompt_mix, tmp_path, "bad", "grpo", micro_batch=3, grad_accum=1,
                       rl={"rewards": [], "reward_file": str(tmp_path / "missing.py"), "num_generations": 4})
    problems = {p.code: p for p in errors(check_run(cfg))}
    assert set(problems) == {"grpo_batch_split", "reward_file_missing"}
    split = problems["grpo_batch_split"]
    assert split.setting == "train.micro_batch" and "rl.num_generations = 4" in split.message
    assert split.params["fits"] == 4  # no micro-batch below 3 holds a whole group of 4
    assert problems["reward_file_missing"].setting == "rl.reward_file"

    cfg = stage_config(demo_model_path, prompt_mix, tmp_path, "bad", "grpo", rl={"rewards": []})
    assert [p.setting for p in errors(check_run(cfg))] == ["rl.rewards"]

    cfg = stage_config(demo_model_path, prompt_mix, tmp_path, "bad", "grpo", rl={"rollout": "unsloth"})
    cfg.model.backend = "peft"
    [problem] = errors(check_run(cfg))
    assert problem.code == "rollout_no_unsloth" and problem.setting == "rl.rollout"


def test_grpo_micro_batch_keeps_whole_groups():
    from core.train.stages import grpo_micro_batch

    assert grpo_micro_batch(8, 1, 4) == 8
    assert grpo_micro_batch(6, 1, 4) == 4
    assert grpo_micro_batch(3, 2, 4) == 2
    assert grpo_micro_batch(1, 1, 8) == 8  # below one group: the smallest micro-batch that holds one
    assert grpo_micro_batch(2, 3, 4) == 4


def test_metrics_keep_trls_stage_keys():
    from core.train.callbacks import stage_metrics

    logs = {"loss": 0.5, "rewards/margins": 1.5, "rewards/reward_letters/mean": 0.25, "kl": 0.01, "reward": 0.3,
            "completions/mean_length": 12.0, "logps/chosen": -3.0, "eval_rewards/accuracies": 1.0,
            "learning_rate": 1e-3, "step_time": 0.2, "nan": float("nan")}
    out = stage_metrics(logs)
    assert out == {"rewards/margins": 1.5, "rewards/reward_letters/mean": 0.25, "kl": 0.01, "reward": 0.3,
                   "completions/mean_length": 12.0, "logps/chosen": -3.0, "eval_rewards/accuracies": 1.0}
    assert json.dumps(out)


def test_samples_are_read_back_and_trimmed_to_a_checkpoint(tmp_path):
    from core.train.stages import trim_samples

    folder = runs.RunFolder(tmp_path)
    lines = [json.dumps({"step": s, "prompt": "p", "completion": f"c{s}", "rewards": {"answer": 1.0}, "answer": "4"})
             for s in (1, 1, 2, 3)]
    folder.samples.write_text("\n".join(lines) + "\n" + '{"step": 4, "prom', encoding="utf-8")  # a torn last line
    assert [s["step"] for s in folder.read_samples()] == [1, 1, 2, 3]
    trim_samples(folder.samples, 2)
    assert [s["completion"] for s in folder.read_samples()] == ["c1", "c1", "c2"]
    assert runs.RunFolder(tmp_path / "none").read_samples() == []


def test_preference_tokens_are_counted_in_the_collator():
    from types import SimpleNamespace

    from core.train.callbacks import TokenCounter
    from core.train.stages import count_tokens

    trainer = SimpleNamespace(data_collator=lambda examples: {"n": len(examples)})
    counter = TokenCounter(echo=lambda line: None)
    assert count_tokens(trainer, counter)
    batch = trainer.data_collator([{"prompt_ids": [1, 2, 3], "chosen_ids": [4, 5], "rejected_ids": [6]}])
    assert batch == {"n": 1} and counter.tokens == 2 * 3 + 2 + 1
    counter.paused = True  # evaluation batches are not training tokens
    trainer.data_collator([{"chosen_input_ids": [1, 2], "rejected_input_ids": [1, 3, 4]}])
    assert counter.tokens == 9


def test_rollout_engine_choice_names_the_setting(demo_model_path, prompt_mix, tmp_path):
    from core.settings import ConfigError
    from core.train.stages import rollout_engine

    def cfg(rollout):
        return stage_config(demo_model_path, prompt_mix, tmp_path, "r", "grpo", rl={"rollout": rollout})

    assert rollout_engine(cfg("auto"), "peft", cuda=False) == "chat"
    # vLLM runs on the peft backend only; an Unsloth model decodes with Unsloth's own graphs, since
    # its patched attention ignores the chat engine's static cache
    assert rollout_engine(cfg("auto"), "unsloth", cuda=True) == "unsloth"
    assert rollout_engine(cfg("auto"), "peft", cuda=True) == "chat"
    assert rollout_engine(cfg("trl"), "peft", cuda=False) == "trl"
    assert rollout_engine(cfg("chat"), "unsloth", cuda=True) == "chat"  # asked for: the engine's check decides
    with pytest.raises(ConfigError) as err:
        rollout_engine(cfg("vllm"), "peft", cuda=False)
    assert err.value.where == "rl.rollout"
    for backend, cuda in (("peft", True), ("unsloth", False)):
        with pytest.raises(ConfigError) as err:
            rollout_engine(cfg("unsloth"), backend, cuda=cuda)
        assert err.value.where == "rl.rollout" and "rl.rollout unsloth" in str(err.value)


@pytest.mark.slow
def test_grpo_with_trls_own_generation(demo_model_path, prompt_mix, letters_reward, tmp_path):
    cfg = stage_config(demo_model_path, prompt_mix, tmp_path / "runs", "trl-gen", "grpo", max_steps=2,
                       rl={"rewards": ["format"], "reward_file": str(letters_reward), "max_completion_len": 8,
                           "rollout": "trl"})
    assert train(cfg) == 0
    st = runs.read_status(run_dir(cfg))
    assert st["state"] == "done" and st["rollout"] == "trl" and st["step"] == 2
    row = train_rows(cfg)[-1]
    assert {"rewards/format/mean", "rewards/reward_letters/mean"} <= set(row)
    assert 1 <= row["completions/mean_length"] <= 8
