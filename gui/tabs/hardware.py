"""Hardware tab: the GPUs (live memory, load, temperature), which Qwen3 fits each card, the memory
breakdown of a chosen row, and "Use this model", which hands the choice to the Train tab.

With several GPUs (detected, or a simulated card count above 1) a second table plans training on
all of them together: per model x method the memory per card with ddp and with fsdp, and the
strategy to use (core.hardware.recommend.recommend_for_cards).

Shared with other tabs: ``ctx.shared["selected_model"]`` is a ``gr.State`` holding None until the
user clicks "Use this model", then a dict ``{"model": "qwen3-8b", "method": "qlora", "seq_len": 2048,
"micro_batch": "auto", "auto_batch": 2, "rank": 16, "display": "Qwen3-8B", "est_gib": 7.9,
"strategy": "single", "gpus": "auto"}`` (``auto_batch``: what ``micro_batch: auto`` picks on that
card; ``strategy`` / ``gpus``: train.strategy and train.gpus, e.g. "fsdp" and "0,1" for a row of
the several-GPU table). Other tabs may listen to its ``.change`` event (in a ``ctx.after_build``
hook: this tab is built first). This tab itself fills the Train tab's widgets registered in
``ctx.shared["train.fields"]`` (model.name_or_path, model.method, train.max_seq_len,
train.micro_batch, lora.r, train.strategy, train.gpus) when the choice changes.
"""

# No `from __future__ import annotations` here: Gradio reads the event handlers' annotations
# (gr.SelectData) at wiring time and must see real classes, not strings.
import html

SEQ_CHOICES = [512, 1024, 2048, 4096, 8192, 16384, 32768]
DEMO_SIMULATED_GIB = 24  # with no GPU, show what a common 24 GB card could do
REFRESH_SECONDS = 5
VERDICT_ICON = {"fits": "✓", "tight": "⚠", "no": "✗"}  # plain symbols: every font has them
PARTS = ("weights", "lora", "activations", "logits", "overhead")
STAGE_PARTS = ("reference", "generation")  # only in the breakdowns of the stages beyond SFT
PART_COLORS = {"weights": "#2563eb", "lora": "#16a34a", "activations": "#ea580c", "logits": "#9333ea",
               "overhead": "#64748b", "reference": "#0891b2", "generation": "#db2777"}


def read_hardware(sim_gib: float | None, sim_count: int = 1):
    from core.hardware.detect import detect, simulated

    if sim_gib and sim_gib > 0:
        return simulated(float(sim_gib), count=max(int(sim_count or 1), 1))
    return detect()


def compute(sim_gib: float | None, seq_len: int, rank: int, gpu_index: int | None = None,
            sim_count: int = 1, stage: str = "sft") -> dict:
    """Detected (or simulated) hardware, the recommendations for one of its cards, and with
    several cards the plan for all of them together (``multi``, None for one card). ``stage``:
    train.stage to judge (the rl section at its defaults)."""
    from core.hardware.recommend import recommend

    report = read_hardware(sim_gib, sim_count)
    result = recommend(report, seq_len=int(seq_len), rank=int(rank), stage=stage or "sft")
    indexes = [g["index"] for g in result["gpus"]]
    chosen = gpu_index if gpu_index in indexes else (indexes[0] if indexes else None)
    result["rows"] = [r for r in result["recommendations"] if r["gpu"] == chosen]
    result["chosen_gpu"] = chosen
    # What train.gpus gets from a row: the cards numbered as the launcher numbers them (within
    # CUDA_VISIBLE_DEVICES where it is set); a count for simulated cards.
    from core.gpu_queue import visible_gpu_ids

    visible = [] if report.simulated else visible_gpu_ids(report)
    for r in result["rows"]:
        pos = visible.index(r["gpu"]) if r["gpu"] in visible else None
        r["gpus_setting"] = "auto" if not pos else f"{pos},"
        r["stage"] = result["stage"]
    multi = result.get("multi")
    if multi:
        positions = [visible.index(i) for i in multi["ids"] if i in visible]
        setting = ",".join(map(str, positions)) if len(positions) == multi["gpus"] else str(multi["gpus"])
        for r in multi["recommendations"] + ([multi["best"]] if multi["best"] else []):
            r["gpus_setting"] = setting
            r["stage"] = result["stage"]
    return result


def report_view(report) -> dict:
    """The part of recommend()'s result the GPU cards need, without judging every model."""
    return {"gpus": [g.to_dict() for g in report.gpus], "message": report.message,
            "system": {"driver_version": report.driver_version, "cuda_version": report.cuda_version,
                       "ram_total_gib": report.ram_total_gib, "ram_available_gib": report.ram_available_gib,
                       "disk_free_gib": report.disk_free_gib, "simulated": report.simulated}}


def gpu_cards_html(t, result: dict) -> str:
    """One card per GPU with a memory bar, plus a line on RAM, disk, driver and CUDA."""
    parts = ['<div class="qt-gpus" style="display:flex;flex-wrap:wrap;gap:12px">']
    if not result["gpus"]:
        parts.append(f'<div class="qt-gpu qt-nogpu" style="padding:12px;border:1px solid #e5e7eb;'
                     f'border-radius:8px">⚠️ {html.escape(t("hardware.no_gpu"))}<br>'
                     f'<small>{html.escape(result["message"])}</small></div>')
    for g in result["gpus"]:
        used_pct = 100.0 * g["used_gib"] / g["total_gib"] if g["total_gib"] else 0.0
        vram = t("hardware.vram", used=f"{g['used_gib']:.1f}", total=f"{g['total_gib']:.1f}")
        facts = []
        if g["compute_capability"]:
            facts.append(t("hardware.cc", cc=g["compute_capability"]))
        facts.append(t("hardware.bf16_yes") if g["bf16"] else t("hardware.bf16_no"))
        if g["utilization_pct"] is not None:
            facts.append(t("hardware.util", pct=g["utilization_pct"]))
        if g["temperature_c"] is not None:
            facts.append(f"{g['temperature_c']} °C")
        if g["power_w"] is not None:
            limit = f" / {g['power_limit_w']:.0f}" if g["power_limit_w"] else ""
            facts.append(f"{g['power_w']:.0f}{limit} W")
        name = t("hardware.sim_name", gib=f"{g['total_gib']:g}") if result["system"].get("simulated") else g["name"]
        parts.append(
            f'<div class="qt-gpu" style="min-width:260px;flex:1;padding:12px;border:1px solid #e5e7eb;'
            f'border-radius:8px"><b>GPU {g["index"]}: {html.escape(name)}</b><br>'
            f'{html.escape(vram)}'
            f'<div style="height:10px;background:#e5e7eb;border-radius:5px;margin:6px 0">'
            f'<div style="width:{used_pct:.0f}%;height:10px;background:#2563eb;border-radius:5px"></div></div>'
            f'<small>{html.escape(" · ".join(facts))}</small></div>')
    parts.append("</div>")
    s = result["system"]
    facts = []
    if s.get("driver_version"):
        facts.append(t("hardware.driver", driver=s["driver_version"], cuda=s.get("cuda_version") or "?"))
    if s.get("ram_total_gib"):
        facts.append(t("hardware.ram", free=f"{s['ram_available_gib']:.1f}", total=f"{s['ram_total_gib']:.1f}"))
    if s.get("disk_free_gib") is not None:
        facts.append(t("hardware.disk", free=f"{s['disk_free_gib']:.0f}"))
    if s.get("simulated"):
        facts.append(t("hardware.simulated_note"))
    parts.append(f'<p style="margin-top:8px"><small>{html.escape(" · ".join(facts))}</small></p>')
    return "".join(parts)


def table_rows(t, rows: list[dict]) -> list[list]:
    out = []
    for r in rows:
        verdict, method = r["verdict"], r["method"]
        out.append(["★" if r["best"] else "", r["display"], t(f"hardware.method.{method}"), r["est_gib"],
                    f"{VERDICT_ICON[verdict]} {t(f'hardware.verdict.{verdict}')}",
                    r["max_seq_len"] or "—", r["micro_batch"] or "—"])
    return out


def best_text(t, result: dict) -> str:
    rows = result["rows"]
    if not result["gpus"]:
        return t("hardware.no_gpu_hint")
    best = next((r for r in rows if r["best"]), None)
    if best is None:
        return t("hardware.no_fit", seq_len=result["seq_len"])
    return t("hardware.best", model=best["display"], method=t(f"hardware.method.{best['method']}"),
             est=f"{best['est_gib']:.1f}", seq_len=best["seq_len"], batch=best["micro_batch"],
             max_seq=best["max_seq_len"])


def multi_table_rows(t, multi: dict | None) -> list[list]:
    """The several-GPU table: GiB per card with ddp and with fsdp, and the strategy to use."""
    out = []
    for r in (multi or {}).get("recommendations", []):
        verdict, method = r["verdict"], r["method"]
        out.append(["★" if r["best"] else "", r["display"], t(f"hardware.method.{method}"), r["ddp_gib"],
                    r["fsdp_gib"], r["strategy"], f"{VERDICT_ICON[verdict]} {t(f'hardware.verdict.{verdict}')}",
                    r["max_seq_len"] or "—", r["micro_batch"] or "—"])
    return out


def multi_text(t, multi: dict | None, seq_len: int) -> str:
    """The several-GPU plan in a sentence, e.g. Qwen3-32B LoRA 16-bit fits 2 x 48 GB with fsdp."""
    if not multi:
        return ""
    best = multi["best"]
    head = t("hardware.multi.head", n=multi["gpus"], gib=f"{multi['vram_gib']:g}")
    if best is None:
        return head + " " + t("hardware.multi.no_fit", n=multi["gpus"], gib=f"{multi['vram_gib']:g}",
                              seq_len=seq_len)
    return head + " " + t("hardware.multi.best", model=best["display"], method=t(f"hardware.method.{best['method']}"),
                          n=multi["gpus"], gib=f"{multi['vram_gib']:g}", strategy=best["strategy"],
                          est=f"{best['est_gib']:.1f}", seq_len=seq_len, batch=best["micro_batch"],
                          effective=best["effective_batch"])


def breakdown_figure(t, row: dict | None):
    import plotly.graph_objects as go

    fig = go.Figure()
    if row is None:
        fig.update_layout(title=t("hardware.chart.empty"), height=360, template="plotly_white")
        return fig
    method = row["method"]
    label = f"{row['display']} · {t(f'hardware.method.{method}')}"
    if row.get("strategy"):
        label += f" · {row['gpus']} x {row['strategy']}"
    for part in PARTS + STAGE_PARTS:
        if part not in row["breakdown"] and part in STAGE_PARTS:
            continue
        value = float(row["breakdown"].get(part, 0.0))
        name = t(f"hardware.part.{part}")
        fig.add_trace(go.Bar(x=[label], y=[value], name=name,
                             marker_color=PART_COLORS[part], text=[f"{value:.2f}"], textposition="inside",
                             hovertemplate=f"{name}: %{{y:.2f}} GiB<extra></extra>"))
    vram = row["vram_gib"]
    fig.add_hline(y=vram, line_dash="dash", line_color="#dc2626",
                  annotation_text=t("hardware.chart.card", gib=f"{vram:.0f}"), annotation_position="top left")
    fig.add_hline(y=vram * 0.9, line_dash="dot", line_color="#ca8a04",
                  annotation_text=t("hardware.chart.headroom"), annotation_position="bottom left")
    fig.update_layout(barmode="stack", bargap=0.55, height=420, template="plotly_white", yaxis_title="GiB",
                      title=t("hardware.chart.title", total=f"{row['est_gib']:.1f}", seq_len=row["seq_len"]),
                      margin={"l": 50, "r": 20, "t": 60, "b": 40}, legend={"orientation": "h", "y": -0.15},
                      yaxis={"range": [0, max(vram, row["est_gib"]) * 1.1]})
    return fig


def selection_for(row: dict) -> dict:
    """What "Use this model" hands to the Train tab (see the module docstring). The micro-batch is
    ``auto``: the table's number is what auto picks on this card, and auto also follows a change of
    length or accumulation in the Train tab and the card the run really gets. ``auto_batch`` is that
    number, for the message."""
    from core.train.autobatch import AUTO

    if row.get("strategy"):  # a row of the several-GPU table
        strategy, gpus = row["strategy"], row.get("gpus_setting") or str(row["gpus"])
    else:
        # One card: the first is what auto takes; another is named as a list of one id ("1,"),
        # since a bare number counts cards.
        strategy = "single"
        gpus = row.get("gpus_setting") or ("auto" if not row.get("gpu") else f"{row['gpu']},")
    return {"model": row["model"], "method": row["method"], "seq_len": row["seq_len"],
            "micro_batch": AUTO, "auto_batch": max(int(row["micro_batch"] or 0), 1),
            "rank": row.get("rank", 16), "display": row["display"], "est_gib": row["est_gib"],
            "strategy": strategy, "gpus": gpus, "stage": row.get("stage") or "sft"}


# Where each part of the choice goes in the Train tab's widgets (ctx.shared["train.fields"], the
# contract of gui/presets.py: dotted RunConfig path -> component).
TRAIN_FIELD_OF = {"model.name_or_path": "model", "model.method": "method", "train.max_seq_len": "seq_len",
                  "train.micro_batch": "micro_batch", "lora.r": "rank", "train.strategy": "strategy",
                  "train.gpus": "gpus", "train.stage": "stage"}


def train_updates(choice: dict | None, paths: list[str]) -> list:
    """Values for the Train tab's widgets at ``paths`` (unchanged while nothing is chosen)."""
    import gradio as gr

    if not choice:
        return [gr.update() for _ in paths]
    return [gr.update(value=choice[TRAIN_FIELD_OF[p]]) for p in paths]


def use(ctx, row) -> tuple:
    """(selected model state, message): "Use this model" with the row's card context - model, method,
    length and the micro-batch the estimator fits on that card. In demo mode (no GPU: the card is
    simulated) the message says that this leaves demo mode, since the CPU cannot train that model."""
    import gradio as gr

    t = ctx.t
    if not row:
        return gr.update(), t("hardware.pick_first")
    choice = selection_for(row)
    values = dict(model=choice["display"], method=t(f"hardware.method.{choice['method']}"),
                  seq_len=choice["seq_len"], batch=choice["auto_batch"])
    if choice["strategy"] != "single":
        values = dict(values, strategy=choice["strategy"], n=row["gpus"], gpus=choice["gpus"])
        if not ctx.demo:
            return choice, t("hardware.used_multi", **values)
        card = t("hardware.simulated_cards", n=row["gpus"], gib=f"{row.get('vram_gib') or 0:g}")
        return choice, t("hardware.used_multi_demo", **values, est=f"{choice['est_gib']:.1f}", card=card)
    if not ctx.demo:
        return choice, t("hardware.used", **values)
    card = t("hardware.simulated_card", gib=f"{row.get('vram_gib') or 0:g}")
    return choice, t("hardware.used_demo", **values, est=f"{choice['est_gib']:.1f}", card=card)


def stage_info(t) -> str:
    """What the stage choice judges; grpo's rows come from the rl section's defaults."""
    from core.config import RLConfig

    rl = RLConfig()
    return t("hardware.stage_info", prompt=rl.max_prompt_len, completion=rl.max_completion_len,
             gens=rl.num_generations)


def build(ctx) -> None:
    import gradio as gr

    from core.choices import STAGES
    from gui.tabs import bind

    t = ctx.t
    headers = [t(f"hardware.col.{c}") for c in ("best", "model", "method", "est", "verdict", "max_seq", "batch")]
    default_sim = DEMO_SIMULATED_GIB if ctx.demo else 0

    multi_headers = [t(f"hardware.col.{c}") for c in ("best", "model", "method", "ddp", "fsdp", "strategy",
                                                       "verdict", "max_seq", "batch")]

    def view(sim_gib, seq_len, rank, gpu_choice, sim_count, stage):
        gpu_index = int(gpu_choice) if gpu_choice not in (None, "") else None
        result = compute(sim_gib, seq_len, rank, gpu_index, sim_count=int(sim_count or 1), stage=stage)
        multi = result.get("multi")
        multi_rows = multi["recommendations"] if multi else []
        for r in result["rows"] + multi_rows:
            r["rank"] = int(rank)
        chosen = next((r for r in result["rows"] if r["best"]), result["rows"][0] if result["rows"] else None)
        gpu_choices = [(f"GPU {g['index']}: {g['name']}", str(g["index"])) for g in result["gpus"]]
        return (gpu_cards_html(t, result), table_rows(t, result["rows"]), best_text(t, result),
                result["rows"], chosen, breakdown_figure(t, chosen),
                gr.update(choices=gpu_choices, value=str(result["chosen_gpu"]) if gpu_choices else None,
                          visible=len(gpu_choices) > 1),
                gr.update(interactive=chosen is not None),
                gr.update(value=multi_text(t, multi, int(seq_len)), visible=bool(multi)),
                gr.update(value=multi_table_rows(t, multi), visible=bool(multi)), multi_rows)

    def cards_only(sim_gib, sim_count):
        return gpu_cards_html(t, report_view(read_hardware(sim_gib, int(sim_count or 1))))

    def pick(rows, evt: gr.SelectData):
        index = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
        row = rows[index] if rows and index is not None and 0 <= index < len(rows) else None
        return row, breakdown_figure(t, row), gr.update(interactive=row is not None)

    with gr.Tab(t("hardware.tab"), id="hardware", elem_id="tab-hardware") as tab:
        gr.Markdown(t("hardware.intro"))
        with gr.Row(equal_height=True):
            refresh_btn = gr.Button(t("hardware.refresh"), scale=0, min_width=140, elem_id="hw-refresh")
            live = gr.Checkbox(value=False, label=t("hardware.live", seconds=REFRESH_SECONDS), scale=0,
                               min_width=220, elem_id="hw-live")
        cards = gr.HTML(elem_id="hw-gpus")
        with gr.Row():
            sim = gr.Number(value=default_sim, minimum=0, maximum=1024, precision=1, label=t("hardware.simulate"),
                            info=t("hardware.simulate_info"), elem_id="hw-sim")
            seq = gr.Dropdown(choices=SEQ_CHOICES, value=2048, label=t("hardware.seq_len"),
                              info=t("hardware.seq_len_info"), allow_custom_value=True, elem_id="hw-seq")
            rank = gr.Dropdown(choices=[8, 16, 32, 64, 128], value=16, label=t("hardware.rank"),
                               info=t("hardware.rank_info"), elem_id="hw-rank")
            sim_count = gr.Number(value=1, minimum=1, maximum=64, precision=0, label=t("hardware.sim_count"),
                                  info=t("hardware.sim_count_info"), elem_id="hw-sim-count")
            stage = gr.Dropdown(choices=[(t(f"hardware.stage.{k}"), k) for k in STAGES], value="sft",
                                label=t("hardware.stage"), info=stage_info(t), elem_id="hw-stage")
            gpu = gr.Dropdown(choices=[], value=None, label=t("hardware.gpu"), visible=False, elem_id="hw-gpu")
        best = gr.Markdown(elem_id="hw-best")
        table = gr.Dataframe(headers=headers, value=None, interactive=False, wrap=True, elem_id="hw-table",
                             label=t("hardware.table"), max_height=460)
        multi_md = gr.Markdown(visible=False, elem_id="hw-multi-best")
        multi_table = gr.Dataframe(headers=multi_headers, value=None, interactive=False, wrap=True, visible=False,
                                   elem_id="hw-multi-table", label=t("hardware.multi.table"), max_height=460)
        gr.Markdown(t("hardware.legend"))
        plot = gr.Plot(label=t("hardware.chart.label"), elem_id="hw-chart")
        with gr.Row(equal_height=True):
            use_btn = gr.Button(t("hardware.use"), variant="primary", scale=0, min_width=200, elem_id="hw-use",
                                interactive=False)
            used_msg = gr.Markdown(elem_id="hw-used")
        rows_state = gr.State([])
        multi_state = gr.State([])
        row_state = gr.State(None)
        selected_model = gr.State(None)
        timer = gr.Timer(REFRESH_SECONDS, active=False)

    ctx.shared["selected_model"] = selected_model
    ctx.shared["hardware.use_button"] = use_btn

    inputs = [sim, seq, rank, gpu, sim_count, stage]
    outputs = [cards, table, best, rows_state, row_state, plot, gpu, use_btn, multi_md, multi_table, multi_state]
    tab.select(view, inputs=inputs, outputs=outputs)
    refresh_btn.click(view, inputs=inputs, outputs=outputs)
    for control in (sim, seq, rank, gpu, sim_count, stage):
        control.change(view, inputs=inputs, outputs=outputs)
    live.change(lambda on: gr.Timer(active=bool(on)), inputs=live, outputs=timer)
    timer.tick(cards_only, inputs=[sim, sim_count], outputs=cards)
    table.select(pick, inputs=rows_state, outputs=[row_state, plot, use_btn])
    multi_table.select(pick, inputs=multi_state, outputs=[row_state, plot, use_btn])
    use_btn.click(bind(use, ctx), inputs=row_state, outputs=[selected_model, used_msg])
    def fill_train_tab():
        # Runs once every tab exists: the Train tab is built after this one.
        fields = ctx.shared.get("train.fields") or {}
        paths = [p for p in TRAIN_FIELD_OF if p in fields]
        if paths:
            selected_model.change(lambda choice: train_updates(choice, paths), inputs=selected_model,
                                  outputs=[fields[p] for p in paths])

    ctx.after_build.append(fill_train_tab)
    # The Hardware tab is the first tab: fill it when the page opens, not only when it is selected.
    if ctx.blocks is not None:  # None when a test builds the tab alone
        ctx.blocks.load(view, inputs=inputs, outputs=outputs)
