"""Every run on disk as one table row, and loss curves to compare runs - for the Runs tab.

Pure reads of the run folders (core.train.runs is the contract), so the overview is the same after
a page reload or a server restart. A run whose config cannot be read still gets a row, with the
reason in ``error``; one bad folder never hides the others.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

COLUMNS = ("name", "state", "created", "model", "method", "rank", "learning_rate", "max_seq_len",
           "data", "steps", "final_loss", "eval_loss", "adapter")


@dataclass
class RunRow:
    name: str
    state: str
    created: str  # local time, "YYYY-MM-DD HH:MM"
    model: str
    method: str
    rank: int | None
    learning_rate: float | None
    max_seq_len: int | None
    data: str  # the mix folder's name, "inline mix", or ""
    steps: str  # "step/total"
    final_loss: float | None  # the last logged training loss
    eval_loss: float | None  # the last eval loss, if the run had an eval split
    adapter: bool  # a final adapter was saved (chat and evaluation can load it)
    path: str = ""
    error: str = ""  # status error, or why the config could not be read
    advice: str = ""

    def cells(self) -> list:
        return [getattr(self, c) for c in COLUMNS]

    def to_dict(self) -> dict:
        return asdict(self)


def _last(rows: list[dict], key: str):
    for row in reversed(rows):
        value = row.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return value
    return None


def _row(summary: dict) -> RunRow:
    from core.config import load_run_config
    from core.runfolder import RunFolder, Status
    from core.settings import ConfigError
    from core.train.runs import read_metrics

    run_dir = Path(summary["path"])
    status = summary.get("status") or Status()
    error = status.error or ""
    model = summary.get("model") or ""
    method = summary.get("method") or ""
    rank = lr = seq = None
    data = ""
    try:
        cfg = load_run_config(RunFolder(run_dir).config)
    except ConfigError as exc:
        error = error or f"config: {exc}"
    else:
        model = model or cfg.model.name_or_path
        method = method or cfg.model.method
        rank, lr, seq = cfg.lora.r, cfg.train.learning_rate, cfg.train.max_seq_len
        data = Path(cfg.data.mix_dir).name if cfg.data.mix_dir else ("inline mix" if cfg.data.mix else "")
    metrics = read_metrics(run_dir)
    final_loss = _last(metrics, "loss")
    if final_loss is None and isinstance(summary.get("loss"), (int, float)):
        final_loss = summary["loss"]
    eval_loss = _last(metrics, "eval_loss")
    if eval_loss is None and isinstance(status.eval_loss, (int, float)):
        eval_loss = status.eval_loss
    step = summary.get("step") or _last(metrics, "step") or 0
    total = summary.get("total_steps") or _last(metrics, "total_steps") or 0
    created = datetime.fromtimestamp(summary["created"]).strftime("%Y-%m-%d %H:%M")
    return RunRow(
        name=summary["name"], state=summary.get("state") or "failed", created=created, model=model,
        method=method, rank=rank, learning_rate=lr, max_seq_len=seq, data=data,
        steps=f"{step}/{total}" if total else str(step),
        final_loss=round(final_loss, 4) if final_loss is not None else None,
        eval_loss=round(eval_loss, 4) if eval_loss is not None else None,
        adapter=bool(summary.get("has_adapter")), path=str(run_dir), error=str(error or ""),
        advice=str(status.advice or ""),
    )


def overview(runs_dir: str | Path) -> list[RunRow]:
    """One row per run folder, newest first."""
    from core.train.runs import list_runs

    return [_row(summary) for summary in list_runs(runs_dir)]


@dataclass
class Curve:
    name: str
    step: list[int]
    loss: list[float]
    eval_step: list[int]
    eval_loss: list[float]


def loss_curves(runs_dir: str | Path, names: list[str]) -> list[Curve]:
    """Training and eval loss per step for each named run (names not on disk are left out)."""
    from core.train.runs import read_metrics

    out = []
    for name in names:
        run_dir = Path(runs_dir) / name
        if not run_dir.is_dir() or Path(name).name != name:
            continue
        metrics = read_metrics(run_dir)
        train = [(m["step"], m["loss"]) for m in metrics
                 if isinstance(m.get("loss"), (int, float)) and isinstance(m.get("step"), int)]
        evals = [(m["step"], m["eval_loss"]) for m in metrics
                 if isinstance(m.get("eval_loss"), (int, float)) and isinstance(m.get("step"), int)]
        out.append(Curve(name, [s for s, _ in train], [v for _, v in train],
                         [s for s, _ in evals], [v for _, v in evals]))
    return out
