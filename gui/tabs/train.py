"""Train tab: settings (widgets made from the RunConfig fields), start / stop / stop now / resume,
and live progress of a run: progress bar with ETA, loss / eval loss / learning rate / grad norm chart,
GPU memory and utilisation, the log.

The training stage (train.stage) shows the rl settings only for the stages that read them
(core.train.live.STAGE_SETTINGS). A dpo / orpo / grpo run gets its own live view under the chart:
reward per reward function, KL and completion length for grpo with its newest sampled completions
(samples.jsonl), the chosen-vs-rejected margin and accuracy for dpo / orpo.

Layout and wiring only. The web server never trains: Start checks the settings all at once
(core.train.validate: every error and warning listed in the message area, naming each setting), then
calls core.train.runs.start_run, which starts `python -m core train` as a detached process; a timer
then reads the run folder. Everything shown comes from the run folders, so the tab reattaches after
a page reload or a server restart. A run is named by its resolved folder (run_id) in the run choice
and the page's state, whatever form the runs folder was given in.

Handlers are module-level ``fn(ctx, *values)`` (gui.tabs.bind); the settings widgets' values arrive
in the order of ``ctx.shared["train.fields"]``.

Shared: ``ctx.shared["train.fields"]`` = {dotted RunConfig path: widget} (the presets section and the
Hardware tab's "Use this model" fill these widgets).

GPUs: a multi-select of the detected cards (name and free memory, read through core.hardware.detect
when the tab opens) writes ``train.gpus``, whose own text box stays the setting (presets and "Use
this model" fill it; it is shown for typing only where no GPU is detected); ``train.strategy`` is a
dropdown; the effective batch shown is micro-batch x accumulation x cards (with micro-batch auto,
the rows auto keeps, shared by the cards).

The worker's notes (backend, batching, QLoRA, checkpointing) and phases are English in status.json
(for the log and the CLI); their codes (core.train.notices) are shown here in the page's language.
"""

from __future__ import annotations

import html
from pathlib import Path

from core.fmt import duration

POLL_SECONDS = 1.5
TRAIN_FIELDS = "train.fields"
# Settings the tab shows, by section; every other RunConfig setting keeps its default. train.gpus and
# train.strategy are in the GPU section (build_gpu_section).
SECTIONS = {
    "lora": ["lora.r", "lora.alpha", "lora.dropout", "lora.use_rslora", "lora.target_modules"],
    "train": ["train.learning_rate", "train.lr_scheduler", "train.warmup_steps", "train.epochs",
              "train.max_steps", "train.micro_batch", "train.grad_accum", "train.max_seq_len",
              "train.packing", "train.gradient_checkpointing", "train.assistant_only_loss",
              "train.train_empty_think"],
    "advanced": ["train.optimizer", "train.weight_decay", "train.max_grad_norm", "train.autocast", "train.seed",
                 "train.logging_steps", "train.save_steps", "train.save_total_limit", "train.eval_steps",
                 "train.report_to", "model.backend", "model.dtype", "model.trust_remote_code"],
}
STATE_ICON = {"queued": "⏳", "running": "▶", "stopping": "⏸", "stopped": "■", "done": "✓", "failed": "✗"}


# ----------------------------------------------------------------------------------- widgets
def _label(ctx, info) -> str:
    return ctx.t.setting_label("train", info.path)


def _help(ctx, info) -> str:
    return ctx.t.setting_help("train", info)


def widget_for(ctx, info, elem_prefix: str = "train-f-"):
    """A Gradio input for one setting, from its type, choices, suggestions and bounds
    (core.settings.field_info)."""
    import typing

    import gradio as gr

    kwargs = {"label": _label(ctx, info), "info": _help(ctx, info), "value": info.default,
              "elem_id": elem_prefix + info.path.replace(".", "-").replace("_", "-")}
    if info.type is bool:
        return gr.Checkbox(**kwargs)
    if typing.get_origin(info.type) is list:
        return gr.CheckboxGroup(choices=list(info.choices or ()), **kwargs)
    if info.choices:
        return gr.Dropdown(choices=list(info.choices), **kwargs)
    if info.suggest:  # common values to pick, any other valid one typed (checked on Start)
        return gr.Dropdown(choices=list(info.suggest), allow_custom_value=True, **kwargs)
    if info.type in (int, float):
        return gr.Number(minimum=info.minimum, maximum=info.maximum,
                         precision=0 if info.type is int else None, **kwargs)
    return gr.Textbox(**kwargs)


# --------------------------------------------------------------------------------- data mixes
def mix_choices(ctx) -> list[tuple[str, str]]:
    """Saved mixes (folders with a manifest.json) in ctx.mixes_dir, newest first."""
    root = Path(ctx.mixes_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if (p / "manifest.json").is_file()]
    found.sort(key=lambda p: (p / "manifest.json").stat().st_mtime, reverse=True)
    return [(p.name, str(p.resolve())) for p in found]


def mix_info(ctx, mix_dir: str) -> str:
    from core.data.mixdir import read_manifest
    from core.settings import ConfigError

    if not mix_dir:
        return ctx.t("train.mix_none", folder=str(ctx.mixes_dir))
    try:
        m = read_manifest(mix_dir)
    except (ConfigError, ValueError, OSError) as exc:
        return "⚠ " + str(exc)
    counts = ", ".join(f"{k}: {v}" for k, v in (m.get("counts") or {}).items())
    return ctx.t("train.mix_summary", train=m.get("train_rows", "?"), eval=m.get("eval_rows", 0),
                 max_len=m.get("max_seq_len", "?"), counts=counts or "-")


# ----------------------------------------------------------------------------------- rendering
def fmt_seconds(s) -> str:
    return duration(s, none="–", sep=" ")


def run_choices(ctx) -> list[tuple[str, str]]:
    from core.train.runs import list_runs

    out = []
    for r in list_runs(ctx.runs_dir):
        state = r["state"] or "?"
        out.append((f"{STATE_ICON.get(state, '?')} {r['name']} · {_state(ctx, state)}", run_id(r["path"])))
    return out


def _state(ctx, state: str) -> str:
    try:
        return ctx.t(f"train.state.{state}")
    except KeyError:
        return state


def progress_html(ctx, status: dict, metrics: list[dict]) -> str:
    t = ctx.t
    state = status.get("state", "?")
    step, total = status.get("step") or 0, status.get("total_steps") or 0
    pct = 100.0 * step / total if total else (100.0 if state == "done" else 0.0)
    last = next((m for m in reversed(metrics) if m.get("loss") is not None), {})
    color = {"failed": "#dc2626", "stopped": "#64748b", "done": "#16a34a"}.get(state, "#2563eb")
    phase = status.get("phase") or ""
    if state in ("running", "stopping") and phase and phase != "training":
        detail = t("train.phase", phase=phase_text(ctx, status))
    elif state == "queued":
        detail = t("train.queued", phase=phase_text(ctx, status) or "…")
    else:
        eta = last.get("eta_s") if state in ("running", "stopping") else None
        detail = t("train.progress_line", step=step, total=total or "?", eta=fmt_seconds(eta),
                   elapsed=fmt_seconds(last.get("elapsed_s") or status.get("elapsed_s")),
                   tps=f"{last.get('tokens_per_s') or status.get('tokens_per_s') or 0:,.0f}")
    return (f'<div id="train-progress-box" data-state="{html.escape(state)}" data-step="{step}" '
            f'data-total="{total}" style="padding:4px 0">'
            f'<div style="display:flex;justify-content:space-between"><b>{STATE_ICON.get(state, "")} '
            f'{html.escape(_state(ctx, state))}</b><span>{pct:.0f}%</span></div>'
            f'<div style="height:12px;background:#e5e7eb;border-radius:6px;margin:6px 0">'
            f'<div class="train-bar" style="width:{pct:.1f}%;height:12px;background:{color};'
            f'border-radius:6px"></div></div><small>{html.escape(detail)}</small></div>')


def phase_text(ctx, status: dict) -> str:
    """The worker's phase ("loading model", "waiting for <run>", ...) in the page's language."""
    phase = status.get("phase") or ""
    if status.get("state") == "queued" and status.get("waiting_for"):
        return ctx.t("train.phase_waiting", holder=status["waiting_for"])
    if not phase:
        return ""
    try:
        return ctx.t(f"train.phase_name.{phase.replace(' ', '_')}")
    except KeyError:  # a phase without a translation: the worker's own words
        return phase


def note_text(ctx, text: str, code) -> str:
    """One of the worker's notes in the page's language, from its code (core.train.notices)."""
    if not isinstance(code, dict) or not code.get("code"):
        return text
    try:
        return ctx.t(f"train.notice.{code['code']}", **(code.get("params") or {}))
    except KeyError:  # a code this version has no string for (or a missing value): the English text
        return text


def status_md(ctx, run_dir: str, status: dict, metrics: list[dict]) -> str:
    t = ctx.t
    lines = [f"**{html.escape(Path(run_dir).name)}** · {html.escape(status.get('model') or '?')} · "
             f"{status.get('method') or '?'} · {t('train.backend')}: {status.get('backend') or '–'}"]
    loss = status.get("loss")
    if loss is not None:
        part = t("train.loss_now", loss=f"{loss:.4f}")
        if status.get("eval_loss") is not None:
            part += " · " + t("train.eval_loss_now", loss=f"{status['eval_loss']:.4f}")
        lines.append(part)
    last = next((m for m in reversed(metrics) if m.get("gpu_mem_gib") is not None), {})
    mem = last.get("gpu_mem_gib")
    if mem is not None or status.get("peak_alloc_gib") is not None:
        util = last.get("gpu_util")
        lines.append(t("train.gpu_line", mem=f"{mem or 0:.1f}", util="–" if util is None else util,
                       peak=f"{status.get('peak_alloc_gib') or 0:.1f}"))
    elif status.get("device") == "cpu":
        lines.append(t("train.cpu_line"))
    if status.get("packing_reason"):
        why = note_text(ctx, status["packing_reason"], status.get("packing_code"))
        lines.append(t("train.f.train.packing") + ": " + html.escape(why))
    notes = status.get("notices") or []
    codes = status.get("notice_codes") or []
    codes = codes if len(codes) == len(notes) else [None] * len(notes)  # a status from an older worker
    for note, code in zip(notes, codes):
        lines.append("ℹ️ " + html.escape(note_text(ctx, note, code)))
    if status.get("error"):
        lines.append("✗ " + t("train.error_line", error=html.escape(str(status["error"]))))
    if status.get("advice"):
        lines.append("→ " + html.escape(str(status["advice"])))
    if status.get("state") in ("done", "stopped") and status.get("adapter"):
        lines.append("✓ " + t("train.adapter_at", path=html.escape(status["adapter"])))
    return "  \n".join(lines)


def figure(ctx, metrics: list[dict]):
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    t = ctx.t
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08, row_heights=[0.62, 0.38],
                        specs=[[{}], [{"secondary_y": True}]])
    train = [m for m in metrics if m.get("loss") is not None]
    evals = [m for m in metrics if m.get("eval_loss") is not None]

    def trace(rows, key, name, color, row, secondary=False, dash=None, mode="lines"):
        pts = [(m["step"], m[key]) for m in rows if m.get(key) is not None]
        if pts:
            fig.add_trace(go.Scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], name=name, mode=mode,
                                     line={"color": color, "dash": dash}), row=row, col=1,
                          secondary_y=secondary if row == 2 else None)

    trace(train, "loss", t("train.chart.loss"), "#2563eb", 1)
    trace(evals, "eval_loss", t("train.chart.eval_loss"), "#dc2626", 1, mode="lines+markers")
    trace(train, "learning_rate", t("train.chart.lr"), "#16a34a", 2)
    trace(train, "grad_norm", t("train.chart.grad_norm"), "#9333ea", 2, secondary=True, dash="dot")
    fig.update_layout(height=430, margin={"l": 50, "r": 50, "t": 30, "b": 40},
                      legend={"orientation": "h", "y": 1.08}, template="plotly_white")
    fig.update_xaxes(title_text=t("train.chart.step"), row=2, col=1)
    fig.update_yaxes(title_text=t("train.chart.loss"), row=1, col=1)
    fig.update_yaxes(title_text=t("train.chart.lr"), row=2, col=1, secondary_y=False)
    fig.update_yaxes(title_text=t("train.chart.grad_norm"), row=2, col=1, secondary_y=True)
    return fig


# ------------------------------------------------------------------------------------ GPUs
# The GPU multi-select (train.gpus), train.strategy and the effective batch they give.
def detect_hardware():
    """The GPUs here (core.hardware.detect never raises; no GPU gives an empty list)."""
    from core.hardware import detect

    return detect.detect()


def gpu_choices(ctx, report) -> list[tuple[str, str]]:
    """(label, id) per GPU a run can use: its name and the memory free now, numbered as train.gpus
    and the launcher number them (within CUDA_VISIBLE_DEVICES where it is set)."""
    from core.gpu_queue import visible_gpu_ids

    cards = {g.index: g for g in report.gpus}
    out = []
    for pos, index in enumerate(visible_gpu_ids(report)):
        g = cards[index]
        out.append((ctx.t("train.gpu_choice", index=pos, name=g.name, free=f"{g.free_gib:.1f}",
                          total=f"{g.total_gib:.1f}"), str(pos)))
    return out


def gpus_setting(selected) -> str:
    """The train.gpus value of the ticked cards: none = auto; one = a list of one id ("1,"), since
    a bare number counts cards; several = their ids ("0,1")."""
    ids = sorted({int(x) for x in (selected or []) if str(x).strip().isdigit()})
    if not ids:
        return "auto"
    return f"{ids[0]}," if len(ids) == 1 else ",".join(str(i) for i in ids)


def ticked_from(setting, ids: list[str]) -> list[str]:
    """The cards to show ticked for a train.gpus value: its ids, the first N for a count, none for auto."""
    from core.hardware.estimate import gpu_count_of

    text = str(setting or "auto").strip().lower()
    if "," in text:
        return [i for i in (p.strip() for p in text.split(",")) if i in ids]
    count = gpu_count_of(text)
    return ids[:count] if count else []


def card_count(strategy, setting, detected: int) -> int:
    """Cards a run of these settings trains on: 1 for single, else the cards train.gpus names (auto:
    every detected GPU)."""
    from core.hardware.estimate import gpu_count_of

    if strategy == "single":
        return 1
    return gpu_count_of(setting) or max(int(detected or 0), 1)


def effective_batch_text(ctx, micro_batch, grad_accum, strategy, setting, detected) -> str:
    """Rows per optimizer step over every card: micro-batch x accumulation x cards for a fixed
    micro-batch; with auto, the 2 x grad_accum rows auto keeps, shared by the cards where they divide
    (core.train.autobatch.share_rows, what the run does)."""
    from core.train.autobatch import REFERENCE_MICRO_BATCH, effective_batch, is_auto, share_rows

    try:
        accum = max(int(grad_accum), 1)
        auto = is_auto(micro_batch) or micro_batch in (None, "")
        micro = REFERENCE_MICRO_BATCH if auto else max(int(str(micro_batch).strip()), 1)
    except (TypeError, ValueError):
        return ""  # a half-typed number: Start names the setting
    cards = card_count(strategy, setting, detected)
    if not auto:
        text = ctx.t("train.effective_batch", micro=micro, accum=accum, cards=cards, total=micro * accum * cards)
    else:
        rows, _ = share_rows(accum, cards)
        total = effective_batch(accum)
        if cards == 1 or rows * cards == total:
            text = ctx.t("train.effective_batch_auto", accum=accum, total=total, share=rows, cards=cards)
        else:
            text = ctx.t("train.effective_batch_auto_uneven", accum=accum, rows=total, cards=cards,
                         total=total * cards)
    if strategy != "single" and cards < 2:
        text += " " + ctx.t("train.strategy_one_card", strategy=strategy)
    return text


def gpu_refresh(ctx, setting, micro_batch, grad_accum, strategy) -> tuple:
    """(multi-select, text box, GPUs note, effective batch, detected count): the cards read again."""
    import gradio as gr

    report = detect_hardware()
    choices = gpu_choices(ctx, report)
    ids = [value for _, value in choices]
    note = ctx.t("train.gpus_none", message=report.message) if not choices else ""
    return (gr.update(choices=choices, value=ticked_from(setting, ids), visible=bool(choices)),
            gr.update(visible=not choices), note,
            effective_batch_text(ctx, micro_batch, grad_accum, strategy, setting, len(choices)), len(choices))


def gpus_picked(ctx, selected) -> str:
    return gpus_setting(selected)


def gpus_typed(ctx, setting, detected) -> object:
    """The multi-select follows a train.gpus value filled in elsewhere (a preset, the Hardware tab).
    ``detected``: how many cards it lists (numbered 0..n-1, see gpu_choices)."""
    import gradio as gr

    ids = [str(i) for i in range(int(detected or 0))]
    return gr.update(value=ticked_from(setting, ids)) if ids else gr.update()


def build_gpu_section(ctx, infos: dict, fields: dict) -> dict:
    """The GPU widgets (in the current layout); registers train.strategy and train.gpus in ``fields``."""
    import gradio as gr

    t = ctx.t
    report = detect_hardware()
    choices = gpu_choices(ctx, report)
    gr.Markdown("### " + t("train.section.gpus"))
    with gr.Row(equal_height=True):
        pick = gr.CheckboxGroup(choices=choices, value=[], label=t("train.gpus_pick"),
                                info=t("train.gpus_pick_info"), visible=bool(choices), scale=3,
                                elem_id="train-gpus-pick")
        strategy = widget_for(ctx, infos["train.strategy"])
    setting = widget_for(ctx, infos["train.gpus"])
    setting.visible = not choices  # typed only where there is nothing to tick (e.g. for a preset)
    note = gr.Markdown(t("train.gpus_none", message=report.message) if not choices else "",
                       elem_id="train-gpus-note")
    batch = gr.Markdown("", elem_id="train-effective-batch")
    detected = gr.State(len(choices))
    fields["train.strategy"] = strategy
    fields["train.gpus"] = setting
    return {"pick": pick, "setting": setting, "strategy": strategy, "note": note, "batch": batch,
            "detected": detected}


def wire_gpu_section(ctx, w: dict, fields: dict, tab) -> None:
    """Events of the GPU widgets; after every field exists (micro-batch and accumulation come later)."""
    from gui.tabs import bind

    micro, accum = fields["train.micro_batch"], fields["train.grad_accum"]
    batch_inputs = [micro, accum, w["strategy"], w["setting"], w["detected"]]
    # .input: only the user's ticks write the setting, so a programmatic tick does not echo back.
    w["pick"].input(bind(gpus_picked, ctx), inputs=w["pick"], outputs=w["setting"])
    w["setting"].change(bind(gpus_typed, ctx), inputs=[w["setting"], w["detected"]], outputs=w["pick"])
    for box in (micro, accum, w["strategy"], w["setting"]):
        box.change(bind(effective_batch_text, ctx), inputs=batch_inputs, outputs=w["batch"])
    refresh = [w["setting"], micro, accum, w["strategy"]]
    tab.select(bind(gpu_refresh, ctx), inputs=refresh,
               outputs=[w["pick"], w["setting"], w["note"], w["batch"], w["detected"]])
    if ctx.blocks is not None:
        ctx.blocks.load(bind(effective_batch_text, ctx), inputs=batch_inputs, outputs=w["batch"])


# ------------------------------------------------------------------------------------ handlers
# Event handlers: ``fn(ctx, *values) -> updates``, wired with gui.tabs.bind in build(). The settings
# widgets' values arrive in the order of ctx.shared[TRAIN_FIELDS] (a dict: dotted path -> widget).
def run_id(run_dir) -> str:
    """A run's one identity in every dropdown and state of the page: its resolved folder. start_run
    returns a resolved path while a relative ``runs/`` lists relative ones; both become this."""
    return str(Path(run_dir).resolve()) if run_dir else ""


def field_paths(ctx) -> list[str]:
    return list(ctx.shared.get(TRAIN_FIELDS) or {})


def config_from(ctx, values: list):
    """The form's values as a RunConfig (ConfigError names the setting of a bad value)."""
    from core.config import RunConfig
    from core.presets import unflatten
    from core.settings import ConfigError, field_info, from_dict

    infos = {f.path: f for f in field_info(RunConfig)}
    flat = dict(zip(field_paths(ctx), values))
    flat["runs_dir"] = str(ctx.runs_dir)
    for p, v in list(flat.items()):
        if isinstance(v, str):
            flat[p] = v.strip()
        if v is None and p in infos and infos[p].default is not None:
            raise ConfigError("a value is needed", p)
    if not flat.get("data.mix_dir"):
        raise ConfigError(ctx.t("train.need_mix"), "data.mix_dir")
    return from_dict(RunConfig, unflatten(flat))


def problem_text(ctx, problem) -> str:
    """One problem of core.train.validate as a line naming the setting, in the page's language."""
    t = ctx.t
    try:
        text = t(f"train.check.{problem.code}", **problem.params)
    except KeyError:  # a rule this version has no string for: the English text names the setting
        text = problem.message
    return t("train.check.line", label=html.escape(t.setting_label("train", problem.setting)),
             path=problem.setting, text=html.escape(text))


def problems_md(ctx, problems) -> str:
    """Every error, then every warning, as Markdown lists (empty when there is none)."""
    from core.train.validate import errors, warnings

    parts = []
    bad, warn = errors(problems), warnings(problems)
    if bad:
        parts.append("✗ " + ctx.t("train.check.errors", n=len(bad)) + "\n"
                     + "\n".join("- " + problem_text(ctx, p) for p in bad))
    if warn:
        parts.append("⚠ " + ctx.t("train.check.warnings") + "\n"
                     + "\n".join("- " + problem_text(ctx, p) for p in warn))
    return "\n\n".join(parts)


def check_card(ctx, cfg=None):
    """The GPU the settings are checked against (the smallest the run takes): none in demo mode (the
    CPU trains the demo model)."""
    if ctx.demo:
        return None
    from core.train.validate import detected_card

    return detected_card(cfg)


def on_start(ctx, *values) -> tuple:
    """(message, run dropdown): check the form's settings all at once (core.train.validate), then
    start the run unless one is an error. Warnings are shown beside the started message."""
    import gradio as gr

    from core.settings import ConfigError
    from core.train import runs
    from core.train.validate import check_run, errors

    try:
        cfg = config_from(ctx, list(values))
    except ConfigError as exc:
        return "✗ " + html.escape(str(exc)), gr.skip()
    problems = check_run(cfg, card=check_card(ctx, cfg))
    if errors(problems):
        return problems_md(ctx, problems), gr.skip()
    try:
        run_dir = runs.start_run(cfg, ctx.runs_dir, cfg.name or None)
    except (ConfigError, runs.RunError) as exc:
        return "✗ " + html.escape(str(exc)), gr.skip()
    message = ctx.t("train.started", name=Path(run_dir).name)
    if problems:
        message += "\n\n" + problems_md(ctx, problems)
    return message, gr.update(choices=run_choices(ctx), value=run_id(run_dir))


def _act(ctx, fn, ok_key: str, run_dir) -> str:
    from core.settings import ConfigError
    from core.train import runs

    if not run_dir:
        return ctx.t("train.pick_run")
    try:
        fn(run_dir)
    except (runs.RunError, ConfigError, OSError) as exc:
        return "✗ " + html.escape(str(exc))
    return ctx.t(ok_key, name=Path(run_dir).name)


def on_stop(ctx, run_dir) -> str:
    from core.train import runs

    return _act(ctx, runs.request_stop, "train.stop_sent", run_dir)


def on_kill(ctx, run_dir) -> str:
    from core.train import runs

    return _act(ctx, runs.kill_run, "train.killed", run_dir)


def on_resume(ctx, run_dir) -> str:
    from core.train import runs

    return _act(ctx, runs.resume_run, "train.resumed", run_dir)


def render(ctx, run_dir, seen_state, force: bool = False) -> tuple:
    """Everything the run panel shows (PANEL order); the chart only when new metrics arrived.
    ``seen_state`` remembers what the page shows, so an unchanged poll sends almost nothing."""
    import gradio as gr

    from core.train import runs

    t = ctx.t
    choices = run_choices(ctx)
    names = [c[1] for c in choices]
    seen_state = dict(seen_state or {})
    run_update = gr.skip()
    if names != seen_state.get("runs"):
        run_update = gr.update(choices=choices)
        seen_state["runs"] = names
    if not run_dir or not Path(run_dir).is_dir():
        return (run_update, "", t("train.no_run"), gr.skip(), gr.skip(),
                gr.update(interactive=False), gr.update(interactive=False), gr.update(interactive=False),
                seen_state)
    run_dir = run_id(run_dir)
    st = runs.read_status(run_dir)
    metrics = runs.read_metrics(run_dir)
    state = st.get("state")
    changed = force or seen_state.get("run") != run_dir or seen_state.get("n") != len(metrics) \
        or seen_state.get("state") != state
    fig = figure(ctx, metrics) if changed else gr.skip()
    log_text = runs.read_log_tail(run_dir) if changed or state in runs.ACTIVE else gr.skip()
    if seen_state.get("state") != state and seen_state.get("run") == run_dir:
        run_update = gr.update(choices=choices)  # the labels carry the state
    seen_state.update(run=run_dir, n=len(metrics), state=state)
    active = state in runs.ACTIVE
    resumable = state in ("stopped", "failed") and st.get("resumable", True)
    return (run_update, progress_html(ctx, st, metrics), status_md(ctx, run_dir, st, metrics), fig, log_text,
            gr.update(interactive=active and state != "stopping"), gr.update(interactive=active),
            gr.update(interactive=resumable), seen_state)


def show_run(ctx, run_dir, seen_state) -> tuple:
    """render() with every part redrawn: after Start / Stop / Resume or picking a run."""
    return render(ctx, run_dir, seen_state, force=True)


def poll(ctx, run_dir, seen_state) -> tuple:
    return render(ctx, run_dir, seen_state)


def initial(ctx, seen_state) -> tuple:
    """On page load: reattach to the newest active run, else the newest run."""
    import gradio as gr

    from core.train import runs

    found = runs.list_runs(ctx.runs_dir)
    active = [r for r in found if r["state"] in runs.ACTIVE]
    pick = (active or found or [None])[0]
    run_dir = run_id(pick["path"]) if pick else None
    out = list(render(ctx, run_dir, {}, force=True))
    out[0] = gr.update(choices=run_choices(ctx), value=run_dir)
    return tuple(out)


def show_mix(ctx, mix_dir) -> str:
    return mix_info(ctx, mix_dir)


def refresh_mixes(ctx, current) -> tuple:
    """(mix dropdown, mix summary): the saved mixes again, keeping the choice."""
    import gradio as gr

    choices = mix_choices(ctx)
    value = current if current else (choices[0][1] if choices else None)
    return gr.update(choices=choices, value=value), mix_info(ctx, value or "")


# ------------------------------------------------------------------------------------- stages
# The stage selector and its rl settings (shown only for the stages that read them), and the live
# view of a dpo / orpo / grpo run: its own chart and the newest sampled completions, on their own
# poll so the run panel above stays as it is for sft.
SAMPLES_SHOWN = 4  # sampled completions shown (the newest logging step's)
PROMPT_TAIL_CHARS = 600  # the end of a prompt is shown: the question sits there
COMPLETION_CHARS = 4000


def stage_visibility(stage: str) -> dict[str, bool]:
    """{rl setting: shown} for ``stage`` (core.train.live.STAGE_SETTINGS), and the section itself."""
    from core.train.live import STAGE_SETTINGS, settings_for

    shown = set(settings_for(stage))
    out = {path: path in shown for path in STAGE_SETTINGS}
    out["section"] = bool(shown)
    return out


def on_stage(ctx, stage) -> tuple:
    """(rl section, *rl widgets in STAGE_SETTINGS order): visible when the stage reads them."""
    import gradio as gr

    from core.train.live import STAGE_SETTINGS

    vis = stage_visibility(stage or "sft")
    return (gr.update(visible=vis["section"]), *(gr.update(visible=vis[p]) for p in STAGE_SETTINGS))


def _num(value, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def stage_line(ctx, stage: str, metrics: list[dict]) -> str:
    """The newest figures of a dpo / orpo / grpo run in one line ("" for sft)."""
    from core.train.live import PREFERENCE_STAGES, latest

    if stage == "grpo":
        length = latest(metrics, "completions/mean_length")
        return ctx.t("train.stage_line.grpo", reward=_num(latest(metrics, "reward")),
                     kl=_num(latest(metrics, "kl"), 4), length="–" if length is None else f"{length:.0f}")
    if stage in PREFERENCE_STAGES:
        acc = latest(metrics, "rewards/accuracies")
        return ctx.t("train.stage_line.preference", margin=_num(latest(metrics, "rewards/margins")),
                     accuracy="–" if acc is None else f"{100 * acc:.0f}%")
    return ""


def stage_figure(ctx, stage: str, metrics: list[dict]):
    """grpo: reward per reward function and in total, KL, completion length. dpo / orpo: the
    chosen-vs-rejected margin with both rewards, and the accuracy. None for sft."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from core.train.live import PREFERENCE_STAGES, reward_names, series

    t = ctx.t
    colors = ["#2563eb", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#be123c"]
    if stage == "grpo":
        rows = [("reward", t("train.chart.rewards_axis")), ("kl", t("train.chart.kl")),
                ("completions/mean_length", t("train.chart.length_axis"))]
        fig = make_subplots(rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.07,
                            row_heights=[0.5, 0.25, 0.25])
        lines = [("reward", t("train.chart.reward"), "#111827", 1, None)]
        lines += [(f"rewards/{name}/mean", t("train.chart.reward_fn", name=name), colors[i % len(colors)], 1, "dot")
                  for i, name in enumerate(reward_names(metrics))]
        lines += [("kl", t("train.chart.kl"), "#dc2626", 2, None),
                  ("completions/mean_length", t("train.chart.completion_len"), "#0891b2", 3, None)]
    elif stage in PREFERENCE_STAGES:
        rows = [("rewards/margins", t("train.chart.margin_axis")),
                ("rewards/accuracies", t("train.chart.accuracy_axis"))]
        fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08, row_heights=[0.6, 0.4])
        lines = [("rewards/margins", t("train.chart.margin"), "#111827", 1, None),
                 ("rewards/chosen", t("train.chart.chosen"), "#16a34a", 1, "dot"),
                 ("rewards/rejected", t("train.chart.rejected"), "#dc2626", 1, "dot"),
                 ("rewards/accuracies", t("train.chart.accuracy"), "#2563eb", 2, None)]
    else:
        return None
    for key, name, color, row, dash in lines:
        steps, values = series(metrics, key)
        if steps:
            fig.add_trace(go.Scatter(x=steps, y=values, name=name, mode="lines+markers" if len(steps) < 30 else "lines",
                                     line={"color": color, "dash": dash}), row=row, col=1)
    for i, (_key, title) in enumerate(rows, start=1):
        fig.update_yaxes(title_text=title, row=i, col=1)
    if stage in PREFERENCE_STAGES:
        fig.update_yaxes(range=[0, 1.02], row=2, col=1)
    fig.update_xaxes(title_text=t("train.chart.step"), row=len(rows), col=1)
    # The legend sits above the plots (long reward names would cover the curves inside them), with
    # room for its rows: two short grpo names share a row, the long dpo / orpo names take one each.
    per_row = 2 if stage == "grpo" else 1
    top = 36 + 21 * -(-len(fig.data) // per_row)
    fig.update_layout(height=500 if stage == "grpo" else 420, margin={"l": 60, "r": 30, "t": top, "b": 40},
                      legend={"orientation": "h", "yanchor": "bottom", "y": 1.02, "x": 0},
                      template="plotly_white")
    return fig


def _clip_start(text: str, n: int) -> str:
    return text if len(text) <= n else "…" + text[-n:]


def _clip_end(text: str, n: int) -> str:
    return text if len(text) <= n else text[:n] + "…"


def samples_html(ctx, samples: list[dict]) -> str:
    """The newest sampled completions: prompt (its end), completion and each reward, all escaped."""
    t = ctx.t
    if not samples:
        return f'<div id="train-samples-box"><small>{html.escape(t("train.samples.none"))}</small></div>'
    pre = 'style="white-space:pre-wrap;margin:2px 0;max-height:260px;overflow:auto;font-size:12px"'
    parts = [f'<div id="train-samples-box" data-step="{samples[0]["step"]}">'
             f'<b>{html.escape(t("train.samples.title", step=samples[0]["step"]))}</b>']
    for s in samples:
        chips = " ".join(
            f'<span class="train-reward" data-name="{html.escape(name)}" style="background:#eef2ff;border-radius:4px;'
            f'padding:0 5px;margin-right:4px">{html.escape(name)} {"–" if value is None else f"{value:+.2f}"}</span>'
            for name, value in s["rewards"].items())
        answer = (t("train.samples.answer", answer=s["answer"]) if s["answer"] is not None
                  else t("train.samples.no_answer"))
        parts.append(
            '<div class="train-sample" style="border-top:1px solid #e5e7eb;padding:6px 0">'
            f'<div>{chips} <small>{html.escape(answer)}</small></div>'
            f'<details><summary><small>{html.escape(t("train.samples.prompt"))}</small></summary>'
            f'<pre {pre}>{html.escape(_clip_start(s["prompt"], PROMPT_TAIL_CHARS))}</pre></details>'
            f'<small>{html.escape(t("train.samples.completion"))}</small>'
            f'<pre {pre}>{html.escape(_clip_end(s["completion"], COMPLETION_CHARS))}</pre></div>')
    parts.append("</div>")
    return "".join(parts)


def render_stage(ctx, run_dir, seen_state, force: bool = False) -> tuple:
    """(stage view box, its line, chart, samples, seen): the live view of a dpo / orpo / grpo run,
    hidden for sft; redrawn only when the run, its metrics or its samples changed."""
    import gradio as gr

    from core.train import runs
    from core.train.live import read_samples, run_stage

    seen_state = dict(seen_state or {})
    if not run_dir or not Path(run_dir).is_dir():
        seen_state.update(run=None, key=None)
        return gr.update(visible=False), "", gr.skip(), "", seen_state
    run_dir = run_id(run_dir)
    metrics = runs.read_metrics(run_dir)
    stage = run_stage(runs.read_status(run_dir), metrics)
    if stage == "sft":
        seen_state.update(run=run_dir, key=None)
        return gr.update(visible=False), "", gr.skip(), "", seen_state
    samples = read_samples(run_dir, SAMPLES_SHOWN) if stage == "grpo" else []
    key = [stage, len(metrics), [(s["step"], s["completion"][:40]) for s in samples]]
    if not force and seen_state.get("run") == run_dir and seen_state.get("key") == key:
        return gr.skip(), gr.skip(), gr.skip(), gr.skip(), seen_state
    seen_state.update(run=run_dir, key=key)
    return (gr.update(visible=True), stage_line(ctx, stage, metrics), stage_figure(ctx, stage, metrics),
            samples_html(ctx, samples) if stage == "grpo" else "", seen_state)


def show_stage(ctx, run_dir, seen_state) -> tuple:
    return render_stage(ctx, run_dir, seen_state, force=True)


def poll_stage(ctx, run_dir, seen_state) -> tuple:
    return render_stage(ctx, run_dir, seen_state)


def build_stage_settings(ctx, infos) -> dict:
    """The stage selector and the rl settings under it: {dotted path: widget}, plus "section"."""
    import gradio as gr

    from core.train.live import STAGE_SETTINGS

    gr.Markdown("### " + ctx.t("train.section.stage"))
    stage_default = infos["train.stage"].default
    widgets = {"train.stage": widget_for(ctx, infos["train.stage"])}
    vis = stage_visibility(stage_default)
    with gr.Accordion(ctx.t("train.section.rl"), open=True, visible=vis["section"],
                      elem_id="train-sec-rl") as section:
        with gr.Row():
            cols = [gr.Column(min_width=200), gr.Column(min_width=200)]
        for i, path in enumerate(STAGE_SETTINGS):
            with cols[i % 2]:
                widgets[path] = widget_for(ctx, infos[path])
                widgets[path].visible = vis[path]
    widgets["section"] = section
    return widgets


def build_stage_view(ctx) -> dict:
    """The live view of a dpo / orpo / grpo run (hidden until such a run is shown)."""
    import gradio as gr

    with gr.Group(visible=False, elem_id="train-stage-view") as box:
        line = gr.Markdown(elem_id="train-stage-line")
        chart = gr.Plot(label=ctx.t("train.stage_view"), elem_id="train-stage-chart")
        samples = gr.HTML("", elem_id="train-samples")
    return {"box": box, "line": line, "chart": chart, "samples": samples,
            "seen": gr.State({"run": None, "key": None})}


def wire_stage(ctx, settings: dict, view: dict, run_sel, timer, refresh) -> None:
    from core.train.live import STAGE_SETTINGS
    from gui.tabs import bind

    settings["train.stage"].change(bind(on_stage, ctx), inputs=settings["train.stage"],
                                   outputs=[settings["section"], *(settings[p] for p in STAGE_SETTINGS)])
    outputs = [view["box"], view["line"], view["chart"], view["samples"], view["seen"]]
    run_sel.change(bind(show_stage, ctx), inputs=[run_sel, view["seen"]], outputs=outputs)
    refresh.click(bind(show_stage, ctx), inputs=[run_sel, view["seen"]], outputs=outputs)
    timer.tick(bind(poll_stage, ctx), inputs=[run_sel, view["seen"]], outputs=outputs, show_progress="hidden")


# ---------------------------------------------------------------------------------------- build
def build(ctx) -> None:
    import gradio as gr

    from core.config import RunConfig
    from core.settings import field_info
    from gui.components import model_picker
    from gui.tabs import bind

    t = ctx.t
    infos = {f.path: f for f in field_info(RunConfig)}
    fields: dict[str, object] = {}

    with gr.Tab(t("train.tab"), id="train", elem_id="tab-train") as tab:
        with gr.Row():
            with gr.Column(scale=3, min_width=420):
                gr.Markdown("### " + t("train.section.model"))
                picker = model_picker.build(ctx)
                fields.update({"model.name_or_path": picker["choice"], "model.method": picker["method"],
                               "model.quant": picker["quant"], "model.hub": picker["hub"]})
                stage_settings = build_stage_settings(ctx, infos)  # the stage decides the mix kind: before Data
                fields.update({p: w for p, w in stage_settings.items() if p != "section"})
                gr.Markdown("### " + t("train.section.data"))
                with gr.Row(equal_height=True):
                    mixes = mix_choices(ctx)
                    mix = gr.Dropdown(choices=mixes, value=mixes[0][1] if mixes else None, allow_custom_value=True,
                                      label=_label(ctx, infos["data.mix_dir"]), info=_help(ctx, infos["data.mix_dir"]),
                                      scale=4, elem_id="train-mix")
                    mix_refresh = gr.Button(t("train.refresh"), size="sm", scale=0, min_width=90,
                                            elem_id="train-mix-refresh")
                mix_about = gr.Markdown(mix_info(ctx, mixes[0][1] if mixes else ""), elem_id="train-mix-info")
                fields["data.mix_dir"] = mix
                gpu_widgets = build_gpu_section(ctx, infos, fields)
                for section, open_ in (("lora", False), ("train", True), ("advanced", False)):
                    with gr.Accordion(t(f"train.section.{section}"), open=open_, elem_id=f"train-sec-{section}"):
                        with gr.Row():
                            cols = [gr.Column(min_width=200), gr.Column(min_width=200)]
                        for i, path in enumerate(SECTIONS[section]):
                            with cols[i % 2]:
                                fields[path] = widget_for(ctx, infos[path])
                name = widget_for(ctx, infos["name"])
                fields["name"] = name
            with gr.Column(scale=2, min_width=380):
                gr.Markdown("### " + t("train.section.run"))
                with gr.Row(equal_height=True):
                    run_sel = gr.Dropdown(choices=run_choices(ctx), value=None, label=t("train.run"), scale=4,
                                          elem_id="train-run", allow_custom_value=False)
                    run_refresh = gr.Button(t("train.refresh"), size="sm", scale=0, min_width=90,
                                            elem_id="train-run-refresh")
                with gr.Row():
                    start = gr.Button(t("train.start"), variant="primary", elem_id="train-start")
                    stop = gr.Button(t("train.stop"), elem_id="train-stop", interactive=False)
                    kill = gr.Button(t("train.kill"), variant="stop", elem_id="train-kill", interactive=False)
                    resume = gr.Button(t("train.resume"), elem_id="train-resume", interactive=False)
                message = gr.Markdown(elem_id="train-message")
                progress = gr.HTML("", elem_id="train-progress")
                status = gr.Markdown(t("train.no_run"), elem_id="train-status")
                chart = gr.Plot(label=t("train.chart.title"), elem_id="train-chart")
                stage_view = build_stage_view(ctx)
                with gr.Accordion(t("train.log"), open=False, elem_id="train-log-box"):
                    log = gr.Code(value="", language=None, lines=14, max_lines=30, elem_id="train-log",
                                  interactive=False)
        timer = gr.Timer(POLL_SECONDS, active=True)
        seen = gr.State({"run": None, "n": -1, "state": None, "runs": None})

    ctx.shared[TRAIN_FIELDS] = fields
    components = list(fields.values())  # in field_paths(ctx) order: what config_from() reads
    wire_gpu_section(ctx, gpu_widgets, fields, tab)

    panel = [run_sel, progress, status, chart, log, stop, kill, resume, seen]
    start.click(bind(on_start, ctx), inputs=components, outputs=[message, run_sel]).then(
        bind(show_run, ctx), inputs=[run_sel, seen], outputs=panel)
    stop.click(bind(on_stop, ctx), inputs=run_sel, outputs=message)
    kill.click(bind(on_kill, ctx), inputs=run_sel, outputs=message).then(
        bind(show_run, ctx), inputs=[run_sel, seen], outputs=panel)
    resume.click(bind(on_resume, ctx), inputs=run_sel, outputs=message).then(
        bind(show_run, ctx), inputs=[run_sel, seen], outputs=panel)
    run_sel.change(bind(show_run, ctx), inputs=[run_sel, seen], outputs=panel)
    run_refresh.click(bind(show_run, ctx), inputs=[run_sel, seen], outputs=panel)
    timer.tick(bind(poll, ctx), inputs=[run_sel, seen], outputs=panel, show_progress="hidden")
    mix.change(bind(show_mix, ctx), inputs=mix, outputs=mix_about)
    mix_refresh.click(bind(refresh_mixes, ctx), inputs=mix, outputs=[mix, mix_about])
    tab.select(bind(refresh_mixes, ctx), inputs=mix, outputs=[mix, mix_about])
    wire_stage(ctx, stage_settings, stage_view, run_sel, timer, run_refresh)
    if ctx.blocks is not None:
        ctx.blocks.load(bind(initial, ctx), inputs=seen, outputs=panel)
