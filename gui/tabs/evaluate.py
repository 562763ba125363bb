"""Evaluate & Export tab: base vs fine-tuned numbers for a run, its exports, and how to serve it.

The evaluation runs in a background thread of the server (core.eval.jobs, sharing the chat's model
cache); a timer polls its progress, so a page reload picks it up again. Exports run the trainer's
`python -m core export` as a subprocess. Results are read from the run folder (eval.json), so they
are there after a server restart too. The model cache and the jobs live in ``ctx.server`` (one per
server process), so an evaluation or export started on /en/ is seen on /zh/ too.

GPU queue (core.gpu_queue): while a training run holds the GPU, an evaluation starts only when the
estimator says both fit; otherwise the progress line says why and nothing starts.
"""

from __future__ import annotations

from core.fmt import number

POLL_SECONDS = 1.0


STAGES = ("load", "loss", "thinking", "accuracy", "evalscope")
# The settings widgets, in the order eval_config() takes them (EvalConfig field names).
SETTINGS_FIELDS = ("split", "loss_rows", "batch_size", "control_prompts", "control_max_new_tokens", "accuracy_rows",
                   "answer_max_new_tokens", "accuracy_thinking", "greedy", "seed", "evalscope_datasets",
                   "evalscope_limit", "generate_batch", "evalscope_data_dir", "evalscope_thinking")
INT_FIELDS = ("loss_rows", "batch_size", "control_prompts", "control_max_new_tokens", "accuracy_rows",
              "answer_max_new_tokens", "seed", "evalscope_limit", "generate_batch")


def _fmt(value) -> str:
    return number(value, none="–")


# ------------------------------------------------------------------------ server-wide objects
def models(ctx):
    """The server's one ModelCache, shared with the Chat tab (one model in memory)."""
    from gui.tabs.chat import models as chat_models

    return chat_models(ctx)


def jobs(ctx):
    """The server's evaluation jobs (every language's page sees the same)."""
    from core.eval.jobs import EvalJobs

    return ctx.server.setdefault("evaluate.jobs", EvalJobs(models(ctx)))


def exports(ctx):
    from core.eval.jobs import ExportJobs

    return ctx.server.setdefault("evaluate.exports", ExportJobs())


def default_config(ctx):
    """The settings shown at first: on the CPU the demo model (random weights) rarely stops by
    itself, so replies are kept short there."""
    from core.config import EvalConfig

    if ctx.demo:
        return EvalConfig(control_max_new_tokens=64, answer_max_new_tokens=128, accuracy_rows=8)
    return EvalConfig()


def target_choices(ctx) -> list[tuple[str, str]]:
    from core.chat.loader import list_targets

    return [(r["label"] if r["kind"] == "run" else "   ↳ " + r["label"], r["path"])
            for r in list_targets(ctx.runs_dir)]


# ------------------------------------------------------------------------------------ results
def table_rows(ctx, result: dict | None) -> list[list]:
    from core.eval.evaluate import results_table

    if not result:
        return []
    rows = []
    for r in results_table(result):
        mark = {True: " ✅", False: " ⚠️", None: ""}[r["better"]]
        change = "–" if r["change"] is None else f"{r['change']:+.4g}{mark}"
        rows.append([metric_label(ctx, r["metric"]), _fmt(r["base"]), _fmt(r["tuned"]), change])
    return rows


def metric_label(ctx, metric: str) -> str:
    """A row's name: the metric's string, or "gsm8k · thinking on" for an EvalScope benchmark."""
    if metric.startswith("evalscope:"):
        _, bench, mode = metric.split(":", 2)
        return ctx.t("evaluate.metric.benchmark", name=bench, mode=ctx.t(f"evaluate.mode_{mode}"))
    return ctx.t(f"evaluate.metric.{metric}")


def figure(ctx, result: dict | None):
    from core.eval.evaluate import results_figure

    t = ctx.t
    if not result:
        return None
    from core.eval.evaluate import benchmark_rows

    labels = {k: t(f"evaluate.metric.{k}") for k in ("loss", "ppl", "think_off", "think_on", "accuracy")}
    labels.update({r["metric"]: metric_label(ctx, r["metric"]) for r in benchmark_rows(result)})
    labels.update(title_rates=t("evaluate.chart.rates"), title_loss=t("evaluate.chart.loss"))
    return results_figure(result, labels=labels, pane_names={"base": t("evaluate.base"), "tuned": t("evaluate.tuned")})


def details(ctx, result: dict | None) -> str:
    t = ctx.t
    if not result:
        return t("evaluate.no_results")
    lines = [t("evaluate.result_meta", created=result.get("created", "?"), split=result.get("split", "?"),
               seconds=result.get("seconds", "?"), mix=result.get("mix_dir", "?"))]
    dropped = result.get("loss_rows") or {}
    if dropped.get("too_long") or dropped.get("no_target"):
        lines.append(t("evaluate.dropped", too_long=dropped.get("too_long", 0), no_target=dropped.get("no_target", 0)))
    acc = result.get("accuracy") or {}
    if acc.get("note"):
        lines.append(t("evaluate.no_answer_rows"))
    for pane in ("base", "tuned"):
        n = (acc.get(pane) or {}).get("ran_out_while_reasoning")
        if n:
            lines.append(t("evaluate.ran_out", n=n, pane=t(f"evaluate.{pane}")))
    es = result.get("evalscope")
    if es:
        lines.append(t("evaluate.evalscope_skipped", why=es["skipped"]) if es.get("skipped") else
                     "**EvalScope**\n```json\n" + _json(es) + "\n```")
    samples = (result.get("thinking") or {}).get("samples", []) + (acc.get("samples") or [])
    if samples:
        lines.append(f"**{t('evaluate.samples')}**")
        for s in samples[:12]:
            pane = t(f"evaluate.{s['pane']}")
            ok = "✅" if s.get("ok") else "❌"
            if "expected" in s:
                lines.append(f"- {ok} {pane} · {s['prompt'][:80]!r} → `{s.get('predicted')}` "
                             f"({t('evaluate.expected')} `{s['expected']}`)")
            else:
                mode = t("evaluate.mode_on") if s["thinking"] else t("evaluate.mode_off")
                lines.append(f"- {ok} {pane} · {mode} · {s['prompt'][:80]!r} → "
                             f"{t('evaluate.reasoned') if s['reasoning'] else t('evaluate.no_reasoning')}")
    return "\n\n".join(lines)


def _json(data) -> str:
    import json

    return json.dumps(data, indent=2, ensure_ascii=False)[:4000]


def progress_text(ctx, job) -> str:
    t = ctx.t
    if job is None:
        return ""
    if job.state == "running":
        stage = job.stage.split(":")[0]
        pct = int(100 * job.fraction)
        bar = "█" * (pct // 5) + "░" * (20 - pct // 5)
        return t("evaluate.running", stage=t(f"evaluate.stage.{stage}") if stage in STAGES else stage,
                 done=job.done, total=job.total, bar=bar)
    if job.state == "failed":
        return t("evaluate.failed", error=job.error)
    if job.state == "cancelled":
        return t("evaluate.cancelled")
    return t("evaluate.finished", seconds=round((job.finished or job.started) - job.started, 1))


def export_text(ctx, job) -> str:
    if job is None:
        return ""
    if job.error:
        return ctx.t("evaluate.export_error", error=job.error)
    return ctx.t(f"evaluate.export_state.{job.state}", fmt=job.fmt)


def eval_config(values):
    """The settings widgets' values (SETTINGS_FIELDS order) as a checked EvalConfig."""
    from core.config import EvalConfig
    from core.settings import from_dict

    data = dict(zip(SETTINGS_FIELDS, values))
    for k in INT_FIELDS:
        data[k] = int(data[k] or 0)
    data["evalscope_datasets"] = [d.strip() for d in (data["evalscope_datasets"] or "").split(",") if d.strip()]
    return from_dict(EvalConfig, data)


# ------------------------------------------------------------------------------------ serving
def serving_view(ctx, target: str | None, thinking: bool, port) -> tuple:
    """(servable dropdown update, serve command, client snippet) for a run."""
    import gradio as gr

    from core.eval.evaluate import run_dir_of
    from core.eval.serving import client_snippet, serving_for_run
    from core.settings import ConfigError

    if not target:
        return gr.update(choices=[], value=None), "", client_snippet(thinking=bool(thinking))
    try:
        items = serving_for_run(run_dir_of(target), port=int(port or 8000), thinking=bool(thinking))
    except ConfigError:
        items = []
    choices = [(f"{i['kind']} · {i['label']}", i["path"]) for i in items]
    value = choices[0][1] if choices else None
    command = items[0]["command"] if items else ctx.t("evaluate.nothing_to_serve")
    return gr.update(choices=choices, value=value), command, client_snippet(
        name=run_dir_of(target).name, port=int(port or 8000), thinking=bool(thinking))


# ------------------------------------------------------------------------------------ handlers
# Event handlers: ``fn(ctx, *values) -> updates``, wired with gui.tabs.bind in build().
def serving_command(ctx, target, path, thinking, port) -> str:
    from core.eval.evaluate import run_dir_of
    from core.eval.serving import serving_for_run

    if not target or not path:
        return ctx.t("evaluate.nothing_to_serve")
    for item in serving_for_run(run_dir_of(target), port=int(port or 8000), thinking=bool(thinking)):
        if item["path"] == path:
            return item["command"]
    return ctx.t("evaluate.nothing_to_serve")


def serving_update(ctx, target, thinking, port) -> tuple:
    """(serve command, client snippet) after the port or the thinking switch changed."""
    return serving_view(ctx, target, thinking, port)[1:]


def show(ctx, target, thinking, port_value) -> tuple:
    """Everything about a run (SHOW_OUTPUTS order): saved results, a running job, exports, serving."""
    import gradio as gr

    from core.eval.evaluate import load_results, run_dir_of

    result = load_results(target) if target else None
    job = jobs(ctx).get(target) if target else None
    export_job = exports(ctx).get(run_dir_of(target)) if target else None
    serve_choices, cmd, code = serving_view(ctx, target, thinking, port_value)
    active = bool((job and job.running) or (export_job and export_job.state == "running"))
    return (table_rows(ctx, result), figure(ctx, result), details(ctx, result), progress_text(ctx, job),
            export_text(ctx, export_job), export_job.log_tail() if export_job else "",
            serve_choices, cmd, code, gr.Timer(active=active))


def poll(ctx, target, thinking, port_value) -> tuple:
    return show(ctx, target, thinking, port_value)


def select(ctx, target, thinking, port_value) -> tuple:
    """show() plus the browser state that remembers the choice."""
    import gradio as gr

    from core.settings import ConfigError

    try:
        return (*show(ctx, target, thinking, port_value), {"target": target or ""})
    except ConfigError as exc:
        return (*[gr.skip()] * 2, ctx.t("evaluate.bad_run", error=str(exc)), *[gr.skip()] * 7, gr.skip())


def start(ctx, target, *values) -> tuple:
    """(progress text, timer): start an evaluation of ``target`` unless one runs or the GPU is busy."""
    import gradio as gr

    from core.chat.loader import gpu_work_args, resolve_target
    from core.config import ChatConfig
    from core.eval.evaluate import run_dir_of
    from core.settings import ConfigError
    from gui.gpu_gate import gpu_gate

    t = ctx.t
    if not target:
        return t("evaluate.pick_first"), gr.skip()
    chat_cfg = ChatConfig(device="cpu" if ctx.demo else "auto")
    running = jobs(ctx).get(target)
    if running is not None and running.running:  # already going: show it, start nothing new
        return progress_text(ctx, running), gr.Timer(active=True)
    try:
        cfg = eval_config(values)
        run_dir_of(target)
        spec = resolve_target(target, chat_cfg, runs_dir=ctx.runs_dir)
    except ConfigError as exc:
        return t("evaluate.bad_setting", error=str(exc)), gr.skip()
    # A loaded model (the chat's, or the one this loads in its place) is counted once.
    ok, note = gpu_gate(ctx, "eval", **gpu_work_args(spec, chat_cfg),
                        resident_gib=0.0 if ctx.demo else models(ctx).resident_gib())
    if not ok:
        return "⏳ " + note, gr.skip()
    job = jobs(ctx).start(target, cfg, chat_cfg, runs_dir=ctx.runs_dir)
    return progress_text(ctx, job) + (f"  \nℹ️ {note}" if note else ""), gr.Timer(active=True)


def cancel(ctx, target):
    import gradio as gr

    job = jobs(ctx).get(target) if target else None
    if job is not None and job.running:
        job.cancel()
        return ctx.t("evaluate.cancelling")
    return gr.skip()


def export(ctx, target, fmt_value) -> tuple:
    """(export status, export log, timer): start exporting the run in ``fmt_value``."""
    import gradio as gr

    from core.eval.evaluate import run_dir_of

    if not target:
        return ctx.t("evaluate.pick_first"), gr.skip(), gr.skip()
    job = exports(ctx).start(run_dir_of(target), fmt_value)
    return export_text(ctx, job), job.log_tail(), gr.Timer(active=job.state == "running")


def refresh(ctx, current):
    import gradio as gr

    return gr.update(choices=target_choices(ctx), value=current)


def restore(ctx, state, done, current) -> tuple:
    """(run dropdown, restored flag) when the tab opens: the browser's choice the first time."""
    import gradio as gr

    choices = target_choices(ctx)
    if done:  # later visits: refresh the list, keep the selection
        return gr.update(choices=choices, value=current), True
    target = (state or {}).get("target") or None
    if target is None and choices:
        target = choices[0][1]
    return gr.update(choices=choices, value=target), True


# ---------------------------------------------------------------------------------------- build
def build(ctx) -> None:
    import gradio as gr

    from core.chat.session import browser_secret
    from core.config import EvalConfig
    from core.eval.jobs import EXPORT_FORMATS
    from core.eval.serving import client_snippet
    from core.settings import field_info
    from gui.tabs import bind

    t = ctx.t
    # Once per server process (every language's page): one model in memory, one set of jobs.
    jobs(ctx)
    exports(ctx)
    fi = {f.name: f for f in field_info(EvalConfig)}
    defaults = default_config(ctx)

    # -------------------------------------------------------------------------------- layout
    with gr.Tab(t("evaluate.tab"), id="evaluate", elem_id="tab-evaluate") as tab:
        gr.Markdown(t("evaluate.intro"))
        with gr.Row(equal_height=True):
            run = gr.Dropdown(choices=target_choices(ctx), value=None, label=t("evaluate.run"), scale=4,
                              allow_custom_value=True, elem_id="eval-run")
            refresh_btn = gr.Button(t("evaluate.refresh"), scale=0, min_width=100, elem_id="eval-refresh")
        with gr.Accordion(t("evaluate.settings"), open=False):
            with gr.Row():
                split = gr.Radio(list(fi["split"].choices), value=defaults.split, label=t("evaluate.split"),
                                 info=fi["split"].help, elem_id="eval-split")
                accuracy_thinking = gr.Radio(list(fi["accuracy_thinking"].choices), value=defaults.accuracy_thinking,
                                             label=t("evaluate.accuracy_thinking"),
                                             info=fi["accuracy_thinking"].help)
                greedy = gr.Checkbox(value=defaults.greedy, label=t("evaluate.greedy"), info=fi["greedy"].help)
            with gr.Row():
                loss_rows = gr.Number(defaults.loss_rows, precision=0, minimum=0, label=t("evaluate.loss_rows"),
                                      info=fi["loss_rows"].help, elem_id="eval-loss-rows")
                batch_size = gr.Number(defaults.batch_size, precision=0, minimum=1, maximum=fi["batch_size"].maximum,
                                       label=t("evaluate.batch_size"), info=fi["batch_size"].help)
                control_prompts = gr.Number(defaults.control_prompts, precision=0, minimum=0,
                                            label=t("evaluate.control_prompts"), info=fi["control_prompts"].help,
                                            elem_id="eval-control-prompts")
                control_tokens = gr.Number(defaults.control_max_new_tokens, precision=0,
                                           minimum=fi["control_max_new_tokens"].minimum,
                                           label=t("evaluate.control_tokens"),
                                           info=fi["control_max_new_tokens"].help)
            with gr.Row():
                accuracy_rows = gr.Number(defaults.accuracy_rows, precision=0, minimum=0,
                                          label=t("evaluate.accuracy_rows"), info=fi["accuracy_rows"].help,
                                          elem_id="eval-accuracy-rows")
                answer_tokens = gr.Number(defaults.answer_max_new_tokens, precision=0,
                                          minimum=fi["answer_max_new_tokens"].minimum,
                                          label=t("evaluate.answer_tokens"), info=fi["answer_max_new_tokens"].help,
                                          elem_id="eval-answer-tokens")
                seed = gr.Number(defaults.seed, precision=0, minimum=0, label=t("evaluate.seed"),
                                 info=fi["seed"].help)
            with gr.Row():
                evalscope = gr.Textbox("", label=t("evaluate.evalscope"), info=fi["evalscope_datasets"].help,
                                       placeholder="gsm8k, math_500")
                evalscope_limit = gr.Number(defaults.evalscope_limit, precision=0, minimum=1,
                                            label=t("evaluate.evalscope_limit"), info=fi["evalscope_limit"].help)
                evalscope_thinking = gr.Radio(list(fi["evalscope_thinking"].choices),
                                              value=defaults.evalscope_thinking,
                                              label=t("evaluate.evalscope_thinking"),
                                              info=fi["evalscope_thinking"].help)
            with gr.Row():
                evalscope_data_dir = gr.Textbox(defaults.evalscope_data_dir, label=t("evaluate.evalscope_data_dir"),
                                                info=fi["evalscope_data_dir"].help, elem_id="eval-evalscope-dir")
                generate_batch = gr.Number(defaults.generate_batch, precision=0, minimum=1,
                                           maximum=fi["generate_batch"].maximum, label=t("evaluate.generate_batch"),
                                           info=fi["generate_batch"].help)
        with gr.Row():
            start_btn = gr.Button(t("evaluate.start"), variant="primary", elem_id="eval-start")
            cancel_btn = gr.Button(t("evaluate.cancel"), elem_id="eval-cancel")
        progress = gr.Markdown("", elem_id="eval-progress")
        with gr.Row():
            with gr.Column(scale=1):
                table = gr.Dataframe(headers=[t("evaluate.col.metric"), t("evaluate.base"), t("evaluate.tuned"),
                                              t("evaluate.col.change")], value=[], interactive=False,
                                     label=t("evaluate.table"), elem_id="eval-table")
            with gr.Column(scale=1):
                chart = gr.Plot(label=t("evaluate.chart.label"), elem_id="eval-chart")
        with gr.Accordion(t("evaluate.details"), open=False):
            info = gr.Markdown(t("evaluate.no_results"), elem_id="eval-details")

        gr.Markdown(f"### {t('evaluate.export_title')}\n{t('evaluate.export_intro')}")
        with gr.Row(equal_height=True):
            fmt = gr.Radio([(t(f"evaluate.format.{f}"), f) for f in EXPORT_FORMATS], value="lora",
                           label=t("evaluate.format"), elem_id="export-format", scale=4)
            export_btn = gr.Button(t("evaluate.export"), scale=1, elem_id="export-start")
        export_status = gr.Markdown("", elem_id="export-status")
        export_log = gr.Code("", language=None, label=t("evaluate.export_log"), lines=8, elem_id="export-log",
                             interactive=False)

        gr.Markdown(f"### {t('evaluate.serve_title')}\n{t('evaluate.serve_intro')}")
        with gr.Row():
            servable = gr.Dropdown(choices=[], label=t("evaluate.servable"), elem_id="serve-what", scale=3)
            port = gr.Number(8000, precision=0, minimum=1, maximum=65535, label=t("evaluate.port"), scale=1)
            snippet_thinking = gr.Checkbox(True, label=t("evaluate.snippet_thinking"), scale=1)
        command = gr.Code("", language="shell", label=t("evaluate.command"), elem_id="serve-command",
                          interactive=False)
        snippet = gr.Code(client_snippet(), language="python", label=t("evaluate.snippet"), elem_id="serve-snippet",
                          interactive=False)
        timer = gr.Timer(POLL_SECONDS, active=False)
        browser = gr.BrowserState({"target": ""}, storage_key="qwentune-evaluate", secret=browser_secret())
        restored = gr.State(False)

    settings_inputs = [split, loss_rows, batch_size, control_prompts, control_tokens, accuracy_rows, answer_tokens,
                       accuracy_thinking, greedy, seed, evalscope, evalscope_limit, generate_batch, evalscope_data_dir,
                       evalscope_thinking]
    show_outputs = [table, chart, info, progress, export_status, export_log, servable, command, snippet, timer]

    refresh_btn.click(bind(refresh, ctx), inputs=run, outputs=run)
    run.change(bind(select, ctx), inputs=[run, snippet_thinking, port], outputs=[*show_outputs, browser])
    start_btn.click(bind(start, ctx), inputs=[run, *settings_inputs], outputs=[progress, timer])
    cancel_btn.click(bind(cancel, ctx), inputs=run, outputs=progress)
    export_btn.click(bind(export, ctx), inputs=[run, fmt], outputs=[export_status, export_log, timer])
    timer.tick(bind(poll, ctx), inputs=[run, snippet_thinking, port], outputs=show_outputs, show_progress="hidden")
    servable.change(bind(serving_command, ctx), inputs=[run, servable, snippet_thinking, port], outputs=command)
    for widget in (snippet_thinking, port):
        widget.change(bind(serving_update, ctx), inputs=[run, snippet_thinking, port], outputs=[command, snippet])

    # Restore when the tab is first opened: Gradio reads a tab's BrowserState only once the tab is shown.
    tab.select(bind(restore, ctx), inputs=[browser, restored, run], outputs=[run, restored])
