"""What a run of each stage shows while it trains: the settings a stage reads, the series of its
charts (from metrics.jsonl, TRL's key names) and the sampled completions of a GRPO run.

metrics.jsonl keeps TRL's keys: for grpo ``reward``, ``reward_std``, ``rewards/<name>/mean`` (one per
reward function), ``kl`` (when rl.kl_beta > 0), ``completions/mean_length``; for dpo / orpo
``rewards/chosen``, ``rewards/rejected``, ``rewards/margins``, ``rewards/accuracies``. A GRPO run also
writes samples.jsonl (core.runfolder.RunFolder.samples), one JSON object per sampled completion::

    {"step": 12, "prompt": "...", "completion": "...", "rewards": {"answer": 1.0, "format": 0.5},
     "answer": "42"}

This module reads only; it imports nothing heavy.
"""

from __future__ import annotations

from pathlib import Path

from core.choices import STAGES

SAMPLES_TAIL_BYTES = 256_000  # the end of samples.jsonl that is read: its newest steps

# Which rl settings each stage reads (the Train tab shows them only for those stages).
STAGE_SETTINGS: dict[str, tuple[str, ...]] = {
    "rl.beta": ("dpo", "orpo"),
    "rl.max_prompt_len": ("dpo", "orpo", "grpo"),
    "rl.kl_beta": ("grpo",),
    "rl.max_completion_len": ("grpo",),
    "rl.num_generations": ("grpo",),
    "rl.temperature": ("grpo",),
    "rl.rewards": ("grpo",),
    "rl.reward_file": ("grpo",),
    "rl.rollout": ("grpo",),
}
PREFERENCE_STAGES = ("dpo", "orpo")

GRPO_KEYS = ("reward", "reward_std", "kl", "completions/mean_length")
PREFERENCE_KEYS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")


def settings_for(stage: str) -> list[str]:
    """The rl settings ``stage`` reads, in STAGE_SETTINGS order (none for sft)."""
    return [path for path, stages in STAGE_SETTINGS.items() if stage in stages]


def run_stage(status, metrics: list[dict]) -> str:
    """The stage of a run: status.json's ``stage``, else what its metrics show, else sft."""
    stage = status.get("stage") if status is not None else None
    if stage in STAGES:
        return stage
    keys = {k for row in metrics for k in row}
    if "reward" in keys or any(_reward_name(k) for k in keys):
        return "grpo"
    if "rewards/margins" in keys:
        return "dpo"
    return "sft"


def _reward_name(key: str) -> str | None:
    if key.startswith("rewards/") and key.endswith("/mean"):
        name = key[len("rewards/"):-len("/mean")]
        return name or None
    return None


def reward_names(metrics: list[dict]) -> list[str]:
    """The reward functions a GRPO run logged (``rewards/<name>/mean``), in first-seen order."""
    names: list[str] = []
    for row in metrics:
        for key in row:
            name = _reward_name(key)
            if name and name not in names:
                names.append(name)
    return names


def series(metrics: list[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one metric: the training rows that carry it as a number."""
    steps, values = [], []
    for row in metrics:
        step, value = row.get("step"), row.get(key)
        if isinstance(step, int) and isinstance(value, (int, float)) and not isinstance(value, bool):
            steps.append(step)
            values.append(float(value))
    return steps, values


def latest(metrics: list[dict], key: str):
    """The newest value of ``key`` (None when no row has it)."""
    for row in reversed(metrics):
        value = row.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None


def _sample(row) -> dict | None:
    """A samples.jsonl row in its documented shape, or None when it is not one. A reward that is not
    a number (None: that function gave no score for the row) is kept as None."""
    if not isinstance(row, dict) or not isinstance(row.get("step"), int):
        return None
    rewards = row.get("rewards") if isinstance(row.get("rewards"), dict) else {}
    clean: dict[str, float | None] = {}
    for k, v in rewards.items():
        if v is None:
            clean[str(k)] = None
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            clean[str(k)] = float(v)
    answer = row.get("answer")
    return {"step": row["step"], "prompt": str(row.get("prompt") or ""),
            "completion": str(row.get("completion") or ""), "rewards": clean,
            "answer": None if answer is None else str(answer)}


def read_samples(run_dir: str | Path, limit: int = 4) -> list[dict]:
    """The newest logging step's sampled completions (at most ``limit``), oldest first.

    Only the end of samples.jsonl is read (it grows all run long); torn and damaged lines are skipped
    (core.runfolder.RunFolder.read_samples), and so is a row of another shape."""
    from core.runfolder import RunFolder

    rows = [r for r in map(_sample, RunFolder(run_dir).read_samples(SAMPLES_TAIL_BYTES)) if r is not None]
    if not rows:
        return []
    newest = max(r["step"] for r in rows)
    return [r for r in rows if r["step"] == newest][-max(1, limit):]
