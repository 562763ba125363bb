"""Runs tab: every run on disk with its status, key settings and final loss; loss curves of the
selected runs overlaid in one chart. Pure reads of the run folders (core.runs_overview), so it shows
the same after a page reload or a server restart. While the tab is open a timer redraws it when a
run's state or step changes (a run started from the Train tab shows up, then goes to done).

Handlers are module-level ``fn(ctx, *values)`` (gui.tabs.bind); ``details`` takes Gradio's
gr.SelectData itself, so it stays a plain function wired in build().
"""


from core.runs_overview import COLUMNS

# Runs chosen for the chart when the user has not chosen: the newest few with a loss.
DEFAULT_OVERLAY = 3
POLL_SECONDS = 3.0
STATE_ICON = {"queued": "⏳", "running": "▶", "stopping": "⏸", "stopped": "■", "done": "✓", "failed": "✗"}


def _state_label(t, state: str) -> str:
    key = f"runs.state.{state}"
    try:
        return t(key)
    except KeyError:  # a state a newer worker wrote: show it as is rather than hide the run
        return state


def _table(ctx, rows) -> list[list]:
    t = ctx.t
    out = []
    for r in rows:
        cells = r.cells()
        cells[COLUMNS.index("state")] = _state_label(t, r.state)
        cells[COLUMNS.index("adapter")] = t("runs.yes") if r.adapter else ""
        cells = ["" if c is None else c for c in cells]
        out.append(cells)
    return out


def _figure(ctx, curves):
    import plotly.graph_objects as go

    t = ctx.t
    fig = go.Figure()
    palette = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777"]
    for i, c in enumerate(curves):
        color = palette[i % len(palette)]
        if c.step:
            fig.add_trace(go.Scatter(x=c.step, y=c.loss, mode="lines+markers" if len(c.step) < 30 else "lines",
                                     name=f"{c.name} · {t('runs.chart.train')}", line={"color": color}))
        if c.eval_step:
            fig.add_trace(go.Scatter(x=c.eval_step, y=c.eval_loss, mode="lines+markers",
                                     name=f"{c.name} · {t('runs.chart.eval')}",
                                     line={"color": color, "dash": "dash"}))
    title = t("runs.chart.title") if any(c.step or c.eval_step for c in curves) else t("runs.chart.empty")
    fig.update_layout(title=title, xaxis_title=t("runs.chart.step"), yaxis_title=t("runs.chart.loss"),
                      height=420, margin={"l": 50, "r": 20, "t": 50, "b": 40},
                      legend={"orientation": "h", "y": -0.2}, template="plotly_white")
    return fig


def _details(ctx, rows, name: str | None) -> str:
    t = ctx.t
    row = next((r for r in rows if r.name == name), None)
    if row is None:
        return t("runs.details_hint")
    lines = [f"### {row.name}", f"**{t('runs.col.state')}**: {_state_label(t, row.state)}  ",
             f"**{t('runs.folder')}**: `{row.path}`"]
    if row.error:
        lines.append(f"\n**{t('runs.error')}**: {row.error}")
    if row.advice:
        lines.append(f"\n**{t('runs.advice')}**: {row.advice}")
    config = _read_text(row.path, "config.yaml")
    if config:
        lines.append(f"\n**{t('runs.config')}**\n\n```yaml\n{config.strip()}\n```")
    return "\n".join(lines)


def _read_text(folder: str, name: str, limit: int = 20000) -> str:
    from pathlib import Path

    try:
        return (Path(folder) / name).read_text(encoding="utf-8", errors="replace")[:limit]
    except FileNotFoundError:
        return ""


def snapshot(ctx, selected=None) -> tuple:
    """(rows, names, chosen): the runs on disk and the runs whose curves are drawn."""
    from core.runs_overview import overview

    rows = overview(ctx.runs_dir)
    names = [r.name for r in rows]
    chosen = [n for n in (selected or []) if n in names]
    if not chosen:
        chosen = [r.name for r in rows if r.final_loss is not None][:DEFAULT_OVERLAY]
    return rows, names, chosen


def run_options(ctx, rows) -> list[tuple[str, str]]:
    """The compare dropdown's (label, name): each label carries the run's state as it is now."""
    return [(f"{STATE_ICON.get(r.state, '?')} {r.name} · {_state_label(ctx.t, r.state)}", r.name) for r in rows]


def signature(rows) -> list:
    """What changes when a run moves on: a poll redraws only when this differs."""
    return [[r.name, r.state, r.steps, r.final_loss] for r in rows]


def refresh(ctx, selected, seen=None) -> tuple:
    """(summary, table, compare dropdown, chart, seen): everything, from the folders."""
    import gradio as gr

    from core.runs_overview import loss_curves

    t = ctx.t
    rows, _names, chosen = snapshot(ctx, selected)
    summary = t("runs.count", n=len(rows)) if rows else t("runs.none", folder=str(ctx.runs_dir))
    return (summary, _table(ctx, rows), gr.update(choices=run_options(ctx, rows), value=chosen),
            _figure(ctx, loss_curves(ctx.runs_dir, chosen)), signature(rows))


def poll(ctx, selected, seen) -> tuple:
    """refresh() when a run's state, step or loss changed since the last draw; else nothing."""
    import gradio as gr

    rows, _names, _chosen = snapshot(ctx, selected)
    if signature(rows) == seen:
        return (gr.skip(),) * 5
    return refresh(ctx, selected)


def chart(ctx, selected):
    from core.runs_overview import loss_curves

    return _figure(ctx, loss_curves(ctx.runs_dir, list(selected or [])))


def build(ctx) -> None:
    import gradio as gr

    from core.runs_overview import overview
    from gui.tabs import bind

    t = ctx.t
    headers = [t(f"runs.col.{c}") for c in COLUMNS]

    def details(evt: gr.SelectData):
        row_value = evt.row_value or []
        name = row_value[0] if row_value else None
        return _details(ctx, overview(ctx.runs_dir), name)

    with gr.Tab(t("runs.tab"), id="runs", elem_id="tab-runs") as tab:
        gr.Markdown(t("runs.intro"))
        with gr.Row(equal_height=True):
            summary = gr.Markdown(elem_id="runs-summary")
            refresh_btn = gr.Button(t("runs.refresh"), scale=0, min_width=120, elem_id="runs-refresh")
        table = gr.Dataframe(headers=headers, value=None, interactive=False, wrap=True,
                             elem_id="runs-table", elem_classes=["qt-table"], label=t("runs.table"), max_height=420)
        selected = gr.Dropdown(choices=[], value=[], multiselect=True, label=t("runs.compare"),
                               info=t("runs.compare_info"), elem_id="runs-select")
        plot = gr.Plot(label=t("runs.chart.label"), elem_id="runs-chart")
        with gr.Accordion(t("runs.details"), open=True):
            info = gr.Markdown(t("runs.details_hint"), elem_id="runs-details")
        seen = gr.State(None)
        timer = gr.Timer(POLL_SECONDS, active=True)

    outputs = [summary, table, selected, plot, seen]
    # Refresh whenever the tab is opened (runs change while the user is elsewhere), on demand, and
    # when a poll sees a run move on.
    tab.select(bind(refresh, ctx), inputs=selected, outputs=outputs)
    refresh_btn.click(bind(refresh, ctx), inputs=selected, outputs=outputs)
    timer.tick(bind(poll, ctx), inputs=[selected, seen], outputs=outputs, show_progress="hidden")
    selected.input(bind(chart, ctx), inputs=selected, outputs=plot)
    table.select(details, outputs=info)
