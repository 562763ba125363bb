"""The Data, Chat and Evaluate tabs' event handlers, called directly (no Blocks app, no browser):
each is ``fn(ctx, *widget values) -> updates``, wired in the tab's build() with gui.tabs.bind."""

from __future__ import annotations

import json

import pytest

from core.settings import write_json_atomic


@pytest.fixture
def ctx(tmp_path, demo_tokenizer):
    from gui.app import AppContext

    c = AppContext(runs_dir=tmp_path / "runs", demo=True, mixes_dir=tmp_path / "mixes")
    c.server["data.tokenizers"] = {"demo": demo_tokenizer}  # loaded once per server, as the tab does
    return c


def form(kind="sample", sample="samples/chat_zh", path="", name="", share_mode="ratio", share=1, **over):
    """The Data tab's "add a source" form values, in gui.tabs.data.FORM_FIELDS order."""
    from gui.tabs.data import FORM_FIELDS

    values = dict(kind=kind, sample=sample, path=path, hub_id="", hub="hf", split="train", subset="", limit=0,
                  name=name, format="auto", share_mode=share_mode, share=share, columns="", instruction_in="user",
                  system_prompt="", min_tokens=0, max_tokens=0)
    values.update(over)
    assert set(values) == set(FORM_FIELDS)
    return [values[f] for f in FORM_FIELDS]


MIX_SETTINGS = [7, 2048, "drop", False, 0, 0.1, True, "last_only", False, "auto"]  # MIX_FIELDS order


# ---------------------------------------------------------------------------------------- data
def test_bind_keeps_the_name_and_hides_ctx(ctx):
    import inspect

    from gui.tabs import bind
    from gui.tabs.data import add_source

    handler = bind(add_source, ctx)
    assert handler.__name__ == "add_source"
    assert list(inspect.signature(handler).parameters) == ["sources", "form"]


def test_sources_are_added_edited_updated_and_removed(ctx):
    from gui.tabs import data

    sources, table, pick, msg = data.add_source(ctx, [], *form())
    assert msg.startswith("✓") and [s["path"] for s in sources] == ["samples/chat_zh"]
    assert table[0][:2] == [1, "chat_zh"] and pick["value"] == 0
    sources, table, pick, msg = data.add_source(ctx, sources, *form(sample="samples/math_reasoning", share=3))
    assert len(sources) == 2 and pick["value"] == 1 and sources[1]["ratio"] == 3

    # Edit loads the source back into the form; the form then gives the same source again.
    loaded = data.edit_source(ctx, sources, 1)
    values = loaded[:len(data.FORM_FIELDS)]
    assert values[0] == "sample" and values[1] == "samples/math_reasoning" and loaded[-1] == ""
    assert data.form_source(ctx, *values) == sources[1]

    sources, table, pick, msg = data.update_source(ctx, sources, 1, *form(sample="samples/math_reasoning",
                                                                          share_mode="count", share=5))
    assert sources[1]["count"] == 5 and sources[1].get("ratio") is None and table[1][-1] == "5 rows"
    assert pick["value"] == 1
    sources, table, pick, msg = data.remove_source(ctx, sources, 0)
    assert [s["path"] for s in sources] == ["samples/math_reasoning"] and msg.startswith("✓")


def test_bad_form_input_keeps_the_sources_and_says_why(ctx):
    from gui.tabs import data

    start = data.add_source(ctx, [], *form())[0]
    sources, _table, _pick, msg = data.add_source(ctx, start, *form(kind="file", path="  "))
    assert sources == start and msg.startswith("✗") and ctx.t("data.need_path") in msg
    for fn in (data.update_source, data.remove_source):
        args = (start, None, *form()) if fn is data.update_source else (start, None)
        out = fn(ctx, *args)
        assert out[0] == start and out[-1] == "✗ " + ctx.t("data.pick_first")
    assert data.edit_source(ctx, start, 5)[-1] == "✗ " + ctx.t("data.pick_first")


def test_rebuild_preview_and_save_a_mix(ctx):
    from gui.tabs import data

    sources = data.load_preset(ctx, "reasoning75_chat25")[0]
    assert len(sources) >= 2
    out = data.rebuild(ctx, sources, None, "demo", *MIX_SETTINGS)
    status, counts, _warn, _drops, hist, result, cache, preview_source, yaml_text = out
    assert status.startswith(ctx.t("data.built", total=result.total, train=len(result.rows),
                                   eval=len(result.eval_rows))[:10])
    assert counts[-1][0] == ctx.t("data.total") and counts[-1][6] == result.total
    assert {n for _label, n in preview_source["choices"]} >= {"*", *(s.name for s in result.sources)}
    assert "seed: 7" in yaml_text and hist is not None and cache is not None
    page, index = data.show_preview(ctx, result, "demo", "*", 1, True, True)
    assert index == 1 and "im_start|&gt;" in page
    assert data.preview_next(ctx, result, "demo", "*", 1, True, True)[1] == 2
    assert data.preview_prev(ctx, result, "demo", "*", 1, True, True)[1] == 1  # stays on the first row
    message, _cache = data.save(ctx, sources, cache, "demo", "my-mix", False, *MIX_SETTINGS)
    assert message.startswith("✓") and (ctx.mixes_dir / "my-mix" / "manifest.json").is_file()
    again, _ = data.save(ctx, sources, cache, "demo", "my-mix", False, *MIX_SETTINGS)
    assert again.startswith("✗")  # an existing mix is not overwritten unless asked


def test_rebuild_reports_a_bad_setting_in_the_page(ctx):
    from gui.tabs import data

    sources = data.add_source(ctx, [], *form())[0]
    status, counts, *_rest, yaml_text = data.rebuild(ctx, sources, None, "demo", 7, 2048, "sideways", False, 0,
                                                     0.1, True)
    assert status.startswith("✗") and "overlong" in status and counts == []
    assert data.rebuild(ctx, [], None, "demo", *MIX_SETTINGS)[0] == ctx.t("data.start")
    assert data.save(ctx, [], None, "demo", "x", False, *MIX_SETTINGS)[0] == "✗ " + ctx.t("data.need_sources")


# ---------------------------------------------------------------------------------------- chat
def test_chat_handlers_without_a_loaded_model(ctx):
    from core.chat import session
    from gui.tabs import chat

    choices = chat.target_choices(ctx)
    assert choices[-1] == (ctx.t("chat.demo_choice"), "demo")
    out = list(chat.send(ctx, "hello", session.new_state(), "", True, 0.6, 0.95, 20, 0.0, 0.0, False, 64, 0))
    assert out[-1][-1] == ctx.t("chat.pick_and_load")
    remembered = dict(session.new_state(), target="demo")
    out = list(chat.send(ctx, "hello", remembered, "", True, 0.6, 0.95, 20, 0.0, 0.0, False, 64, 0))
    assert out[-1][-1] == ctx.t("chat.not_loaded_reload")  # the browser remembers; the server does not hold it
    out = list(chat.send(ctx, "hello", remembered, "", True, 9.0, 0.95, 20, 0.0, 0.0, False, 64, 0))
    assert "temperature" in out[-1][-1]  # a bad setting is named
    assert list(chat.load(ctx, "", "", session.new_state()))[-1][0] == ctx.t("chat.pick_first")
    assert chat.apply_preset(ctx, False) != chat.apply_preset(ctx, True)


def test_chat_render_and_restore(ctx):
    from core.chat import session
    from gui.tabs import chat

    turns = [{"user": "2+3?", "base": {"reasoning": "add", "answer": "5"}, "tuned": {"answer": "", "finish": "length"}}]
    base = chat.render(ctx, turns, "base")
    assert [m["role"] for m in base] == ["user", "assistant", "assistant"]
    assert base[1]["metadata"]["title"] == ctx.t("chat.reasoning") and base[2]["content"] == "5"
    assert chat.render(ctx, turns, "tuned")[-1]["content"] == f"*{ctx.t('chat.no_answer')}*"
    assert chat.render(ctx, turns, "tuned", has_pane=False)[-1]["content"] == f"*{ctx.t('chat.no_tuned_short')}*"
    state = dict(session.new_state(), target="demo", system="be brief", turns=turns)
    out = chat.restore(ctx, state, False)
    assert out[0]["value"] == "demo" and out[2] == "be brief" and out[3] == ctx.t("chat.not_loaded_reload")
    assert out[4] == base and out[-1] is True
    assert chat.restore(ctx, state, True)[-1] is True  # second visit: nothing replaced
    cleared = chat.clear(ctx, state)
    assert cleared[0] == [] and cleared[2]["turns"] == [] and cleared[2]["target"] == "demo"


# ------------------------------------------------------------------------------------ evaluate
# SETTINGS_FIELDS order
EVAL_SETTINGS = ["eval", 8, 4, 2, 16, 2, 16, "on", True, 0, "gsm8k, math_500", 10, 8, "", "both"]


def test_eval_settings_and_empty_choices(ctx):
    from core.settings import ConfigError
    from gui.tabs import evaluate

    cfg = evaluate.eval_config(EVAL_SETTINGS)
    assert cfg.loss_rows == 8 and cfg.evalscope_datasets == ["gsm8k", "math_500"] and cfg.greedy is True
    with pytest.raises(ConfigError, match="split"):
        evaluate.eval_config(["nowhere", *EVAL_SETTINGS[1:]])
    assert evaluate.start(ctx, "", *EVAL_SETTINGS)[0] == ctx.t("evaluate.pick_first")
    assert evaluate.export(ctx, "", "lora")[0] == ctx.t("evaluate.pick_first")
    assert evaluate.serving_command(ctx, "", "", True, 8000) == ctx.t("evaluate.nothing_to_serve")
    assert evaluate.restore(ctx, {"target": ""}, False, None)[0]["value"] is None  # no runs yet
    assert evaluate.default_config(ctx).accuracy_rows == 8  # demo mode keeps the CPU's work short


def test_eval_shows_a_runs_saved_results(ctx, tmp_path):
    from gui.tabs import evaluate

    run = ctx.runs_dir / "r1"
    (run / "adapter").mkdir(parents=True)
    write_json_atomic(run / "status.json", {"state": "done", "model": "demo", "method": "lora"})
    (run / "config.yaml").write_text("name: r1\nmodel:\n  name_or_path: demo\n", encoding="utf-8")
    (run / "adapter" / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "demo", "r": 8}))
    result = {"created": "2026-01-01T00:00:00", "split": "eval", "seconds": 3, "mix_dir": "m",
              "loss": {"base": {"loss": 2.0, "ppl": 7.4}, "tuned": {"loss": 1.5, "ppl": 4.5}}}
    write_json_atomic(run / "eval.json", result)
    choices = evaluate.target_choices(ctx)
    assert any(path == str(run) or path.endswith("r1") for _label, path in choices)
    update, restored = evaluate.restore(ctx, {"target": ""}, False, None)
    assert restored is True and update["value"] == choices[0][1]
    table, _fig, details, progress, *_rest, timer = evaluate.show(ctx, str(run), True, 8000)
    assert table and table[0][0] == ctx.t("evaluate.metric.loss") and "2" in table[0][1]
    assert "2026-01-01" in details and progress == ""
    selected = evaluate.select(ctx, str(run), True, 8000)
    assert selected[-1] == {"target": str(run)}


# ------------------------------------------------------------------------------- demo mode
def test_use_this_model_in_demo_mode_says_it_leaves_demo_mode(ctx):
    from gui.app import AppContext, banner_for_model
    from gui.tabs import hardware

    row = {"model": "qwen3-8b", "method": "qlora", "seq_len": 2048, "micro_batch": 4, "rank": 16,
           "display": "Qwen3-8B", "est_gib": 9.3, "vram_gib": 24.0, "card": "simulated"}
    choice, message = hardware.use(ctx, row)
    assert choice["model"] == "qwen3-8b" and choice["method"] == "qlora" and choice["micro_batch"] == "auto"
    assert choice["auto_batch"] == 4 and "micro-batch auto, 4 on this card" in message
    assert "This leaves demo mode" in message and "24 GB" in message and "9.3 GiB" in message
    gpu = AppContext(runs_dir=ctx.runs_dir, demo=False, gpu_names=["NVIDIA RTX 4090 (24 GiB)"])
    assert "demo" not in hardware.use(gpu, row)[1].lower()
    # The banner follows the form's model: no "demo model is selected" while qwen3-8b is in it.
    assert banner_for_model(ctx, "qwen3-8b") == ctx.t("app.mode_demo_real", model="qwen3-8b")
    assert banner_for_model(ctx, "demo") == ctx.t("app.mode_demo")
    assert banner_for_model(gpu, "qwen3-8b") == ctx.t("app.mode_gpu", gpus="NVIDIA RTX 4090 (24 GiB)")


def test_chat_on_a_run_still_training_names_the_adapters_step(ctx):
    from core.chat.loader import LoadSpec
    from gui.tabs import chat

    run = ctx.runs_dir / "r1"
    (run / "checkpoints" / "checkpoint-30").mkdir(parents=True)
    write_json_atomic(run / "status.json", {"state": "running", "step": 34})
    spec = LoadSpec(kind="run", target=str(run), label="r1", base="demo",
                    adapter=str(run / "checkpoints" / "checkpoint-30"), run_dir=str(run))
    assert chat.training_note(ctx, spec) == ctx.t("chat.still_training", run="r1", step="30")
    write_json_atomic(run / "status.json", {"state": "done"})
    assert chat.training_note(ctx, spec) == ""


def test_the_data_tabs_tokenizer_follows_the_trained_model(ctx, demo_model_path):
    from gui.tabs.data import tokenizer_for_choice

    assert tokenizer_for_choice(ctx, "demo") == "demo"
    assert tokenizer_for_choice(ctx, "qwen3-1.7b") == "qwen3"  # not downloaded: the shared real tokenizer
    assert tokenizer_for_choice(ctx, str(demo_model_path)) == str(demo_model_path.resolve())


def test_the_built_app_wires_the_tokenizer_box_to_the_model_box(tmp_path):
    from gui.app import build_app

    blocks = build_app(runs_dir=tmp_path / "runs", demo=True, mixes_dir=tmp_path / "mixes")
    by_id = {getattr(b, "elem_id", None): b for b in blocks.blocks.values()}
    box, model = by_id["data-tokenizer"], by_id["model-choice"]
    assert box.value == "demo"
    wired = [d for d in blocks.config["dependencies"]
             if model._id in [t[0] for t in d["targets"]] and box._id in d["outputs"]]
    assert wired, "the model box's change must update the Data tab's tokenizer"


def test_a_saved_mix_opens_again_for_editing_and_kept_sources_come_back(ctx):
    from gui.tabs import data

    sources = data.add_source(ctx, [], *form(sample="samples/math_reasoning", share=3))[0]
    sources = data.add_source(ctx, sources, *form(sample="samples/chat_zh", share=1))[0]
    settings = [11, 1024, "drop", False, 0, 0.2, True, "split", True, "sft"]
    assert data.save(ctx, sources, None, "demo", "edit-me", False, *settings)[0].startswith("✓")
    (name, folder), = data.saved_mixes(ctx)
    assert name == "edit-me"
    out = data.open_mix(ctx, folder)
    opened, table, pick, *values, save_name, message = out
    assert [s["path"] for s in opened] == ["samples/math_reasoning", "samples/chat_zh"]
    assert opened[0]["ratio"] == 3 and len(table) == 2 and pick["value"] == 1
    assert values == settings and save_name == "edit-me" and message.startswith("✓")
    assert data.open_mix(ctx, "")[-1] == "✗ " + ctx.t("data.pick_saved_mix")
    assert data.open_mix(ctx, str(ctx.mixes_dir / "nope"))[-1].startswith("✗")
    # What the browser kept is shown again when the tab opens after a reload (once per page).
    kept, table, pick, message, done = data.restore_sources(ctx, opened, False)
    assert kept == opened and len(table) == 2 and done is True and "2" in message
    assert data.restore_sources(ctx, opened, True)[0].__class__ is not list  # later visits: untouched
    assert data.restore_sources(ctx, [{"path": "x", "ratio": "lots"}], False)[0] == []  # damaged: start empty


def test_eval_table_and_chart_show_benchmarks_per_thinking_mode(ctx):
    from gui.tabs import evaluate

    result = {"loss": {"base": {"loss": 2.0, "ppl": 7.4}, "tuned": {"loss": 1.5, "ppl": 4.5}},
              "evalscope": {"scores": {"off": {"base": {"gsm8k": 0.2, "ceval": 0.5}, "tuned": {"gsm8k": 0.4}},
                                       "on": {"base": {"gsm8k": 0.3}, "tuned": {"gsm8k": 0.6}}}}}
    rows = {r[0]: r for r in evaluate.table_rows(ctx, result)}
    off, on = ctx.t("evaluate.mode_off"), ctx.t("evaluate.mode_on")
    assert rows[f"gsm8k · {off}"][1:3] == ["0.2", "0.4"] and rows[f"gsm8k · {on}"][3].startswith("+0.3")
    assert rows[f"ceval · {off}"][2] == "–"  # the fine-tuned pane has no ceval score in this result
    fig = evaluate.figure(ctx, result)
    xs = {x for tr in fig.data for x in tr.x}
    assert any("gsm8k" in x for x in xs) and any("ceval" in x for x in xs)


def test_export_is_offered_from_the_start(ctx, tmp_path):
    """The export command is part of the app: the button is live and the status starts blank."""
    from gui.app import build_app
    from gui.tabs import evaluate

    assert evaluate.export_text(ctx, None) == ""
    app = build_app(runs_dir=tmp_path / "runs", demo=True, lang="en", mixes_dir=tmp_path / "mixes")
    props = {c["props"].get("elem_id"): c["props"] for c in app.get_config_file()["components"]}
    assert props["export-start"].get("interactive") is not False
    assert props["export-status"]["value"] == ""


def test_every_remix_of_the_data_tab_waits_for_the_one_before(tmp_path):
    """Two re-mixes side by side (the preset's, then Add's or Build's) may finish out of order, and the
    older sources' counts would stay on screen: every listener that writes the counts shares one
    queue slot, so they run one at a time in the order they were asked."""
    from gui.app import build_app

    blocks = build_app(runs_dir=tmp_path / "runs", demo=True, mixes_dir=tmp_path / "mixes")
    counts = next(b for b in blocks.blocks.values() if getattr(b, "elem_id", None) == "data-counts")
    writers = [fn for fn in blocks.fns.values() if counts._id in {o._id for o in fn.outputs}]
    assert len(writers) >= 5  # Build, and the re-mix after add / update / remove / preset / settings
    assert {fn.concurrency_id for fn in writers} == {"data-remix"}
    assert {fn.concurrency_limit for fn in writers} == {1}
