"""The Runs tab's data: every run folder as a row, loss curves to overlay, all from disk."""

from __future__ import annotations

import json
from pathlib import Path

from core.config import DataConfig, LoraConfig, ModelConfig, RunConfig, TrainConfig
from core.runs_overview import COLUMNS, loss_curves, overview
from core.settings import dump_yaml


def make_run(runs: Path, name: str, state: str, losses: list[float], evals: dict[int, float] | None = None,
             queued: str = "2026-01-02T10:00:00+00:00", **cfg) -> Path:
    run = runs / name
    run.mkdir(parents=True)
    config = RunConfig(name=name, model=ModelConfig(name_or_path=cfg.get("model", "demo"), method="lora"),
                       lora=LoraConfig(r=cfg.get("r", 8)),
                       train=TrainConfig(learning_rate=cfg.get("lr", 1e-3), max_seq_len=cfg.get("seq", 256)),
                       data=DataConfig(mix_dir=str(runs.parent / "mixes" / "demo-mix")))
    dump_yaml(config, run / "config.yaml")
    (run / "status.json").write_text(json.dumps({
        "state": state, "pid": None, "queued": queued, "step": len(losses), "total_steps": 10,
        "model": config.model.name_or_path, "method": "lora", "loss": losses[-1] if losses else None,
        "error": "CUDA out of memory" if state == "failed" else None,
        "advice": "Lower micro_batch" if state == "failed" else None}))
    rows = [{"step": i + 1, "total_steps": 10, "loss": v, "eval_loss": None} for i, v in enumerate(losses)]
    for step, v in (evals or {}).items():
        rows.append({"step": step, "total_steps": 10, "loss": None, "eval_loss": v})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 9, "lo')
    if state == "done":
        (run / "adapter").mkdir()
        (run / "adapter" / "adapter_config.json").write_text("{}")
    return run


def test_overview_lists_every_run_with_settings_and_final_loss(tmp_path):
    runs = tmp_path / "runs"
    make_run(runs, "a-old", "done", [2.0, 1.5, 1.2], {3: 1.4}, queued="2026-01-01T10:00:00+00:00", r=16, lr=2e-4)
    make_run(runs, "b-new", "failed", [3.0], queued="2026-01-03T10:00:00+00:00", seq=1024)
    (runs / "not-a-run").mkdir()
    broken = runs / "c-broken"
    broken.mkdir()
    (broken / "config.yaml").write_text("lora:\n  r: [oops\n")
    rows = overview(runs)
    names = [r.name for r in rows]
    assert "not-a-run" not in names
    assert names.index("b-new") < names.index("a-old")  # newest first
    a = next(r for r in rows if r.name == "a-old")
    assert (a.state, a.model, a.method, a.rank, a.learning_rate, a.max_seq_len) == ("done", "demo", "lora", 16,
                                                                                     2e-4, 256)
    assert a.data == "demo-mix" and a.final_loss == 1.2 and a.eval_loss == 1.4 and a.adapter
    assert a.steps == "3/10" and a.created.startswith("2026-01-01")
    b = next(r for r in rows if r.name == "b-new")
    assert b.state == "failed" and b.error == "CUDA out of memory" and b.advice == "Lower micro_batch"
    assert b.max_seq_len == 1024 and not b.adapter
    c = next(r for r in rows if r.name == "c-broken")
    assert c.state == "failed" and c.error  # listed, with the reason, never hiding the others
    assert len(a.cells()) == len(COLUMNS)


def test_loss_curves_skip_torn_lines_and_unknown_runs(tmp_path):
    runs = tmp_path / "runs"
    make_run(runs, "r1", "done", [2.0, 1.0], {2: 1.5})
    curves = loss_curves(runs, ["r1", "missing", "../r1"])
    assert [c.name for c in curves] == ["r1"]
    assert curves[0].step == [1, 2] and curves[0].loss == [2.0, 1.0]
    assert curves[0].eval_step == [2] and curves[0].eval_loss == [1.5]


def test_an_empty_or_missing_runs_folder_is_fine(tmp_path):
    assert overview(tmp_path / "nothing") == []
    assert loss_curves(tmp_path / "nothing", ["x"]) == []


def test_tab_table_figure_and_details_are_translated(tmp_path):
    from gui.app import AppContext
    from gui.tabs.runs import _details, _figure, _table

    runs = tmp_path / "runs"
    make_run(runs, "r1", "done", [2.0, 1.0], {2: 1.5})
    make_run(runs, "r2", "running", [2.5, 2.0, 1.8], queued="2026-01-05T10:00:00+00:00")
    ctx = AppContext(runs_dir=runs, demo=True, lang="zh")
    rows = overview(runs)
    table = _table(ctx, rows)
    states = {row[0]: row[COLUMNS.index("state")] for row in table}
    assert states["r1"] == "已完成"
    fig = _figure(ctx, loss_curves(runs, ["r1", "r2"]))
    assert [tr.name for tr in fig.data] == ["r1 · 训练", "r1 · 验证", "r2 · 训练"]
    assert fig.data[1].line.dash == "dash"
    text = _details(ctx, rows, "r1")
    assert "config.yaml" in text and "```yaml" in text and "name: r1" in text
    assert _details(ctx, rows, None) == ctx.t("runs.details_hint")


def test_runs_tab_handlers_show_live_states_and_creation_time(tmp_path):
    import gradio as gr

    from core.train.runs import write_status
    from gui.app import AppContext
    from gui.tabs import runs as tab

    ctx = AppContext(runs_dir=tmp_path / "runs", demo=True)
    run = make_run(ctx.runs_dir, "r1", "stopped", [2.0, 1.8], queued="2026-01-01T10:00:00+00:00")
    write_status(run, created="2026-01-01T10:00:00+00:00")
    _summary, _table, dropdown, _fig, seen = tab.refresh(ctx, [])
    assert dropdown["choices"] == [(f"■ r1 · {ctx.t('runs.state.stopped')}", "r1")] and dropdown["value"] == ["r1"]
    assert tab.poll(ctx, ["r1"], seen) == (gr.skip(),) * 5  # nothing moved: nothing is sent
    # A resume rewrites "queued"; the run keeps its creation time, and the label follows its state.
    write_status(run, state="done", queued="2026-03-05T09:00:00+00:00", step=10)
    _summary, table, dropdown, _fig, seen2 = tab.poll(ctx, ["r1"], seen)
    assert dropdown["choices"][0][0] == f"✓ r1 · {ctx.t('runs.state.done')}" and seen2 != seen
    assert table[0][COLUMNS.index("created")].startswith("2026-01-01")
