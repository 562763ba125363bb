"""The Train tab: built from the RunConfig fields, registered for presets / Hardware, renders a run."""

from __future__ import annotations

import json

import pytest

from core.settings import write_json_atomic


@pytest.fixture
def ctx(tmp_path):
    from gui.app import AppContext

    (tmp_path / "mixes" / "m1").mkdir(parents=True)
    write_json_atomic(tmp_path / "mixes" / "m1" / "manifest.json",
                      {"train_rows": 40, "eval_rows": 4, "max_seq_len": 2048, "counts": {"chat": 40}})
    return AppContext(runs_dir=tmp_path / "runs", demo=True, mixes_dir=tmp_path / "mixes")


def test_tab_builds_its_widgets_from_the_settings(ctx):
    import gradio as gr

    from core.config import RunConfig
    from core.settings import field_info
    from gui.tabs import train

    with gr.Blocks():
        train.build(ctx)
    fields = ctx.shared[train.TRAIN_FIELDS]
    infos = {f.path: f for f in field_info(RunConfig)}
    shown = [p for section in train.SECTIONS.values() for p in section]
    assert set(shown) <= set(fields) and set(fields) <= set(infos)
    for path in ("model.name_or_path", "model.method", "data.mix_dir", "name"):
        assert path in fields
    for path in shown:  # each widget carries the setting's own default, bounds and choices
        widget, info = fields[path], infos[path]
        assert widget.value == info.default or (widget.value in (None, []) and not info.default), path
        if info.choices:
            values = [c[1] if isinstance(c, tuple) else c for c in widget.choices]
            assert values == list(info.choices), path
        if info.suggest:  # an open list: the suggestions, and anything else may be typed
            values = [c[1] if isinstance(c, tuple) else c for c in widget.choices]
            assert values == list(info.suggest) and widget.allow_custom_value, path
    assert fields["lora.r"].minimum == 1 and fields["lora.r"].maximum == 1024
    assert fields["data.mix_dir"].value.endswith("m1")


def test_zh_page_shows_translated_labels_and_help(tmp_path):
    import gradio as gr

    from gui.app import AppContext
    from gui.tabs import train

    ctx = AppContext(runs_dir=tmp_path / "runs", demo=True, lang="zh", mixes_dir=tmp_path / "mixes")
    with gr.Blocks():
        train.build(ctx)
    r = ctx.shared[train.TRAIN_FIELDS]["train.micro_batch"]
    assert r.label == "微批大小" and "显存" in r.info


def test_run_panel_renders_progress_status_and_chart(ctx, tmp_path):
    from gui.tabs import train

    run = tmp_path / "runs" / "r1"
    run.mkdir(parents=True)
    status = {"state": "running", "pid": 1, "step": 5, "total_steps": 20, "model": "demo", "method": "lora",
              "backend": "peft", "loss": 1.5, "eval_loss": 1.7, "peak_alloc_gib": 7.05, "phase": "training",
              "packing_reason": "auto: rows fill only 20% ...", "notices": ["backend: Unsloth"]}
    metrics = [{"step": s, "loss": 2.0 - s / 10, "eval_loss": None, "learning_rate": 1e-4, "grad_norm": 0.5,
                "tokens_per_s": 1234.0, "gpu_mem_gib": 9.6, "gpu_util": 88, "elapsed_s": s, "eta_s": 15.0}
               for s in range(1, 6)] + [{"step": 5, "loss": None, "eval_loss": 1.7}]
    html = train.progress_html(ctx, status, metrics)
    assert 'data-step="5"' in html and "25%" in html and "15s" in html and "1,234" in html
    md = train.status_md(ctx, str(run), status, metrics)
    assert "1.5000" in md and "1.7000" in md and "9.6" in md and "88" in md and "Unsloth" in md
    fig = train.figure(ctx, metrics)
    names = {tr.name for tr in fig.data}
    assert {"loss", "eval loss", "learning rate", "grad norm"} <= names
    failed = train.status_md(ctx, str(run), dict(status, state="failed", error="Out of GPU memory",
                                                     advice="Try train.micro_batch = 1"), [])
    assert "Out of GPU memory" in failed and "micro_batch = 1" in failed


def test_run_list_and_mixes_come_from_disk(ctx, tmp_path):
    from gui.tabs import train

    run = tmp_path / "runs" / "r1"
    run.mkdir(parents=True)
    (run / "status.json").write_text(json.dumps({"state": "done"}))
    (run / "config.yaml").write_text("name: r1\n")
    assert train.run_choices(ctx) == [(f"✓ r1 · {ctx.t('train.state.done')}", str(run))]
    assert train.mix_choices(ctx)[0][0] == "m1"
    assert "40" in train.mix_info(ctx, train.mix_choices(ctx)[0][1])


def test_method_defaults_to_lora_in_demo_mode_and_qlora_on_gpu(ctx, tmp_path):
    import gradio as gr

    from gui.app import AppContext
    from gui.components.model_picker import default_method
    from gui.tabs import train

    with gr.Blocks():
        train.build(ctx)  # demo mode: the CPU, where QLoRA's 4-bit weights cannot load
    assert ctx.shared[train.TRAIN_FIELDS]["model.method"].value == "lora"
    assert default_method(AppContext(runs_dir=tmp_path / "runs", demo=False)) == "qlora"


def test_worker_notes_show_in_the_pages_language(tmp_path):
    from core.train.data import choose_packing
    from core.train.notices import Notice, codes_of
    from gui.app import AppContext
    from gui.tabs import train

    mode, why = choose_packing("auto", [120, 300, 1800, 90, 2000, 150], 2, 2048)
    assert mode == "bucket" and why.startswith("auto: rows fill only") and why.code == "packing_on_sparse"
    notes = [Notice("backend_peft_no_cuda"), Notice("gc_standard_recompute"), "a note from an older worker"]
    status = json.loads(json.dumps({  # as status.json holds it: the English text and the codes
        "state": "running", "phase": "loading model", "model": "demo", "method": "lora", "backend": "peft",
        "notices": notes, "notice_codes": codes_of(notes), "packing_reason": why, "packing_code": why.to_json()}))
    assert status["notices"][0] == "backend: transformers + PEFT (no CUDA GPU)"  # the CLI / log text is kept
    zh = AppContext(runs_dir=tmp_path, demo=True, lang="zh")
    md = train.status_md(zh, str(tmp_path / "r"), status, [])
    assert "没有 CUDA GPU" in md and "标准重计算" in md and "长度相近的样本并排成批" in md
    assert "a note from an older worker" in md and "no CUDA GPU" not in md
    assert "加载模型" in train.progress_html(zh, status, [])
    queued = {"state": "queued", "phase": "waiting for other-run (pid 7)", "waiting_for": "other-run (pid 7)"}
    assert "等待正在进行的训练结束（other-run (pid 7)）" in train.progress_html(zh, queued, [])
    en = AppContext(runs_dir=tmp_path, demo=True)
    assert "backend: transformers + PEFT (no CUDA GPU)" in train.status_md(en, str(tmp_path / "r"), status, [])
    old = dict(status, notice_codes=None, packing_code=None)  # a status.json from before the codes
    assert "no CUDA GPU" in train.status_md(zh, str(tmp_path / "r"), old, [])


def test_every_notice_code_has_a_string_with_the_same_english_text():
    from core.train.notices import TEXT
    from gui.i18n import all_strings

    for code, english in TEXT.items():
        assert all_strings()[f"train.notice.{code}"]["en"] == english, code


def test_start_with_the_default_relative_runs_folder_selects_the_new_run(tmp_path, monkeypatch):
    """``make run`` passes the relative runs/: the started run must be one of the dropdown's choices
    (not an absolute path beside relative ones) and the panel must show it, not the previous run."""
    import gradio as gr

    from core.train import runs
    from gui.app import AppContext
    from gui.tabs import train

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(runs, "_spawn", lambda cmd, run_dir: None)  # no worker: the folder is enough
    (tmp_path / "mixes" / "m1").mkdir(parents=True)
    write_json_atomic(tmp_path / "mixes" / "m1" / "manifest.json", {"train_rows": 40, "max_seq_len": 512})
    old = tmp_path / "runs" / "old-run"
    old.mkdir(parents=True)
    write_json_atomic(old / "status.json", {"state": "done", "queued": "2020-01-01T00:00:00"})
    ctx = AppContext(runs_dir="runs", demo=True, mixes_dir="mixes")
    with gr.Blocks():
        train.build(ctx)
    fields = ctx.shared[train.TRAIN_FIELDS]
    values = {p: w.value for p, w in fields.items()}
    values.update({"name": "new-run", "model.name_or_path": "demo", "train.max_steps": 10})
    message, dropdown = train.on_start(ctx, *[values[p] for p in train.field_paths(ctx)])
    assert "new-run" in message and not message.startswith("✗")
    choices = [value for _label, value in dropdown["choices"]]
    assert dropdown["value"] in choices and dropdown["value"] == str(tmp_path / "runs" / "new-run")
    panel = train.show_run(ctx, dropdown["value"], {})
    assert "new-run" in panel[2] and 'data-state="queued"' in panel[1]
    # Polls keep the same identity: the list does not change under the selection.
    again = train.poll(ctx, dropdown["value"], panel[-1])
    assert again[-1]["run"] == dropdown["value"] and again[-1]["runs"] == choices
    first = train.initial(ctx, {})
    assert first[0]["value"] in [value for _label, value in first[0]["choices"]]
