"""Chat tab: the base model and the fine-tuned model answer the same prompt side by side.

Both panes stream, alternating piece by piece (they share one model in memory, core.chat.engine).
The conversation, the chosen run and the sampling settings live in the browser (gr.BrowserState),
so a page reload shows them again; the loaded model lives server-side in the ModelCache kept in
``ctx.server["chat.models"]`` (one per server: shared with the Evaluate tab and with every language's
page), keyed by what was loaded. Nothing is loaded at start-up: only the Load button loads a model.

GPU queue (core.gpu_queue): while a training run holds the GPU, Load and Send go ahead only when the
estimator says both fit; otherwise the status line says why (gui.gpu_gate) and nothing starts.
"""

from __future__ import annotations

import dataclasses
import time

STREAM_INTERVAL_S = 0.08  # how often the panes are redrawn while streaming
# Qwen3 writes maths with all of these.
LATEX = [{"left": "$$", "right": "$$", "display": True}, {"left": "\\[", "right": "\\]", "display": True},
         {"left": "$", "right": "$", "display": False}, {"left": "\\(", "right": "\\)", "display": False}]


def _fmt_status(t, engine) -> str:
    info = engine.info
    parts = [t("chat.loaded", label=info.get("label", "?"), kind=t(f"chat.kind.{info.get('kind', 'model')}"))]
    parts.append(t("chat.loaded_base", base=info.get("base_path") or info.get("base") or "?"))
    if info.get("adapter"):
        parts.append(t("chat.loaded_adapter", adapter=info["adapter"]))
    if info.get("tuned"):
        parts.append(t("chat.loaded_merged", path=info["tuned"]))
    device = f"{info.get('device', '?')} · {info.get('dtype', '?')}" + (" · 4-bit" if info.get("four_bit") else "")
    parts.append(t("chat.loaded_device", device=device))
    text = "  \n".join(parts)
    for note in info.get("notes") or []:
        text += f"  \n⚠️ {note}"
    if "tuned" not in engine.panes:
        text += "  \n" + t("chat.no_tuned")
    return text


SAMPLING_FIELDS = ("thinking", "temperature", "top_p", "top_k", "min_p", "presence_penalty", "greedy",
                   "max_new_tokens", "seed")
MODELS_KEY = "chat.models"  # ctx.server key of the ModelCache (shared with the Evaluate tab)


def models(ctx):
    """The server's one ModelCache (every page and the Evaluate tab share it)."""
    from core.chat.loader import ModelCache

    return ctx.server.setdefault(MODELS_KEY, ModelCache())


def chat_cfg(ctx, base_model: str):
    from core.config import ChatConfig

    return ChatConfig(base_model=(base_model or "").strip(), device="cpu" if ctx.demo else "auto")


def target_choices(ctx) -> list[tuple[str, str]]:
    """(label, path) of every run and checkpoint in ctx.runs_dir, then the demo model."""
    from core.chat.loader import list_targets

    rows = list_targets(ctx.runs_dir)
    out = [(r["label"] if r["kind"] == "run" else "   ↳ " + r["label"], r["path"]) for r in rows]
    out.append((ctx.t("chat.demo_choice"), "demo"))
    return out


def engine_for(ctx, state: dict):
    """The engine this browser session loaded, if the server still holds it."""
    from core.chat.loader import ModelCache, resolve_target
    from core.settings import ConfigError

    if not state.get("target"):
        return None
    cfg = chat_cfg(ctx, state.get("base_model", ""))
    try:
        spec = resolve_target(state["target"], cfg, runs_dir=ctx.runs_dir)
    except ConfigError:
        return None
    return models(ctx).get(ModelCache.key(spec, cfg))


def training_note(ctx, spec) -> str:
    """"still training, adapter from step N" when the loaded run is still training (its newest
    checkpoint is what the fine-tuned pane answers with); "" otherwise."""
    from pathlib import Path

    from core.train import runs

    if not spec.run_dir or not spec.adapter:
        return ""
    state = runs.read_status(spec.run_dir).get("state")
    if state not in runs.ACTIVE:
        return ""
    name = Path(spec.adapter).name
    step = name.split("-", 1)[1] if name.startswith("checkpoint-") else "?"
    return ctx.t("chat.still_training", run=Path(spec.run_dir).name, step=step)


def _resident(ctx) -> float:
    return 0.0 if ctx.demo else models(ctx).resident_gib()


# ----------------------------------------------------------------------------------- rendering
def reply_messages(ctx, reply: dict | None, *, pending: bool = False, in_reasoning: bool = False) -> list[dict]:
    t = ctx.t
    reply = reply or {}
    out = []
    reasoning = reply.get("reasoning")
    if reasoning or in_reasoning:
        title = t("chat.thinking_now") if in_reasoning else t("chat.reasoning")
        out.append({"role": "assistant", "content": reasoning or "…",
                    "metadata": {"title": title, "status": "pending" if in_reasoning else "done"}})
    answer = reply.get("answer") or ""
    if answer.strip():
        out.append({"role": "assistant", "content": answer})
    elif not pending and not in_reasoning:
        key = "chat.no_answer" if reply.get("finish") == "length" else "chat.empty_answer"
        out.append({"role": "assistant", "content": f"*{t(key)}*"})
    return out


def render(ctx, turns: list[dict], pane: str, live_user: str | None = None, live=None,
           has_pane: bool = True) -> list[dict]:
    """A pane's messages: the stored turns, then the prompt being answered (``live``: a Generation)."""
    no_pane = {"role": "assistant", "content": f"*{ctx.t('chat.no_tuned_short')}*"}
    msgs = []
    for turn in turns:
        msgs.append({"role": "user", "content": turn["user"]})
        msgs += reply_messages(ctx, turn.get(pane)) if has_pane else [no_pane]
    if live_user is not None:
        msgs.append({"role": "user", "content": live_user})
        if not has_pane:
            msgs.append(no_pane)
        elif live is not None:
            split = live.split(partial=True)
            msgs += reply_messages(ctx, {"reasoning": split.reasoning, "answer": split.answer}, pending=True,
                                   in_reasoning=split.in_reasoning and live.reply is None)
    return msgs


def widgets_from(settings: dict) -> list:
    """The sampling widgets' values (SAMPLING_FIELDS order) of stored settings."""
    from core.chat import session
    from core.chat.sampling import resolve

    s = resolve(session.sampling_config(settings))
    return [s.thinking, s.temperature, s.top_p, s.top_k, s.min_p, s.presence_penalty, s.greedy,
            s.max_new_tokens, s.seed]


def sampling_from(values):
    """The sampling widgets' values (SAMPLING_FIELDS order) as a checked SamplingConfig."""
    from core.config import SamplingConfig
    from core.settings import from_dict

    data = dict(zip(SAMPLING_FIELDS, values))
    for k in ("top_k", "max_new_tokens", "seed"):
        data[k] = int(data[k]) if data[k] is not None else None
    return from_dict(SamplingConfig, data)


# ------------------------------------------------------------------------------------ handlers
# Event handlers: ``fn(ctx, *values) -> updates``, wired with functools.partial in build().
def refresh(ctx, current):
    import gradio as gr

    return gr.update(choices=target_choices(ctx), value=current)


def load(ctx, target, base, state):
    """Load the chosen run / checkpoint / model (a generator: "loading…", then the loaded status).
    Yields (status, browser state, base pane, tuned pane)."""
    import gradio as gr

    from core.chat import session
    from core.chat.loader import ModelCache, gpu_work_args, resolve_target
    from core.settings import ConfigError
    from gui.gpu_gate import gpu_gate

    t = ctx.t
    state = session.normalise(state)
    target = (target or "").strip()
    if not target:
        yield t("chat.pick_first"), gr.skip(), gr.skip(), gr.skip()
        return
    yield t("chat.loading", target=target), gr.skip(), gr.skip(), gr.skip()
    cfg = chat_cfg(ctx, base)
    cache = models(ctx)
    note = ""
    try:
        spec = resolve_target(target, cfg, runs_dir=ctx.runs_dir)
        if cache.get(ModelCache.key(spec, cfg)) is None:  # already loaded: nothing new on the GPU
            # The model loaded now is dropped before the new one loads: its memory counts once.
            ok, note = gpu_gate(ctx, "chat", **gpu_work_args(spec, cfg), resident_gib=_resident(ctx))
            if not ok:
                yield "⏳ " + note, gr.skip(), gr.skip(), gr.skip()
                return
        engine = cache.load(spec, cfg, runs_dir=ctx.runs_dir)
    except ConfigError as exc:
        yield t("chat.load_failed", error=str(exc)), gr.skip(), gr.skip(), gr.skip()
        return
    except (RuntimeError, OSError, ValueError) as exc:  # e.g. out of memory while loading
        yield t("chat.load_failed", error=f"{type(exc).__name__}: {exc}"), gr.skip(), gr.skip(), gr.skip()
        return
    if target != state["target"] or (base or "") != state["base_model"]:
        state["turns"] = []  # a different model: the old conversation does not belong to it
    state["target"], state["base_model"] = target, (base or "").strip()
    turns = state["turns"]
    training = training_note(ctx, spec)
    status = _fmt_status(t, engine) + (f"  \n⏳ {training}" if training else "") + (f"  \nℹ️ {note}" if note else "")
    yield (status, state, render(ctx, turns, "base"),
           render(ctx, turns, "tuned", has_pane="tuned" in engine.panes))


def send(ctx, text, state, system_prompt, *values):
    """Both panes answer ``text`` (a generator streaming the panes).
    Yields (base pane, tuned pane, browser state, prompt box, stats line)."""
    import gradio as gr

    from core.chat import session
    from core.chat.loader import engine_gpu_args
    from core.settings import ConfigError
    from gui.gpu_gate import gpu_gate

    t = ctx.t
    skip = gr.skip
    state = session.normalise(state)
    text = (text or "").strip()
    if not text:
        yield skip(), skip(), skip(), skip(), skip()
        return
    try:
        cfg = sampling_from(values)
    except ConfigError as exc:
        yield skip(), skip(), skip(), skip(), t("chat.bad_setting", error=str(exc))
        return
    engine = engine_for(ctx, state)
    if engine is None:
        key = "chat.not_loaded_reload" if state.get("target") else "chat.pick_and_load"
        yield skip(), skip(), skip(), skip(), t(key)
        return
    # Asked before every generation: a training run may have started since the model was loaded.
    ok, note = gpu_gate(ctx, "chat", **engine_gpu_args(engine), resident_gib=_resident(ctx))
    if not ok:
        yield skip(), skip(), skip(), skip(), "⏳ " + note
        return
    state["settings"], state["system"] = dataclasses.asdict(cfg), system_prompt or ""
    turns = state["turns"]
    has_tuned = "tuned" in engine.panes
    histories = {pane: session.pane_messages(turns, pane, text) for pane in engine.panes}
    try:
        stream = engine.compare_stream(histories, cfg, system=system_prompt or "")
    except ValueError as exc:
        yield skip(), skip(), skip(), skip(), t("chat.failed", error=str(exc))
        return
    gens = stream.generations
    yield (render(ctx, turns, "base", text, gens["base"]),
           render(ctx, turns, "tuned", text, gens.get("tuned"), has_pane=has_tuned), skip(), "",
           t("chat.generating") + (f"  \nℹ️ {note}" if note else ""))
    last = time.monotonic()
    try:
        for _pane, piece in stream:
            now = time.monotonic()
            if piece and now - last < STREAM_INTERVAL_S:
                continue
            last = now
            yield (render(ctx, turns, "base", text, gens["base"]),
                   render(ctx, turns, "tuned", text, gens.get("tuned"), has_pane=has_tuned), skip(), skip(), skip())
    except RuntimeError as exc:  # CUDA out of memory and the like: tell, keep the conversation
        yield skip(), skip(), skip(), text, t("chat.failed", error=str(exc))
        return
    replies = stream.replies()
    new_state = session.add_turn(state, text, {p: dict(r.to_json(), finish=r.finish_reason)
                                               for p, r in replies.items()})
    line = " · ".join(
        t("chat.stats", pane=t(f"chat.pane.{p}"), tokens=r.new_tokens, speed=f"{r.tokens_per_s:.1f}",
          finish=t(f"chat.finish.{r.finish_reason}"))
        for p, r in replies.items())
    yield (render(ctx, new_state["turns"], "base"), render(ctx, new_state["turns"], "tuned", has_pane=has_tuned),
           new_state, skip(), line)


def clear(ctx, state):
    """(base pane, tuned pane, browser state, stats): the conversation emptied."""
    from core.chat import session

    state = session.normalise(state)
    state["turns"] = []
    engine = engine_for(ctx, state)
    has_tuned = engine is None or "tuned" in engine.panes
    return [], render(ctx, [], "tuned", has_pane=has_tuned), state, ""


def apply_preset(ctx, on):
    """Qwen3's sampling preset for thinking on / off: temperature, top_p, top_k, min_p."""
    from core.chat.sampling import preset

    p = preset(bool(on))
    return p["temperature"], p["top_p"], p["top_k"], p["min_p"]


def restore(ctx, state, done):
    """On the tab's first opening: what the browser kept (RESTORE_OUTPUTS order)."""
    import gradio as gr

    from core.chat import session

    t = ctx.t
    if done:  # once per page: later visits keep what the user changed meanwhile
        return [gr.skip()] * (6 + len(SAMPLING_FIELDS)) + [True]
    state = session.normalise(state)
    engine = engine_for(ctx, state)
    if engine is not None:
        note = _fmt_status(t, engine)
    elif state["target"]:
        note = t("chat.not_loaded_reload")
    else:
        note = t("chat.pick_and_load")
    has_tuned = engine is None or "tuned" in engine.panes
    choices = target_choices(ctx)
    value = state["target"] or (choices[0][1] if choices else None)
    return [gr.update(choices=choices, value=value), state["base_model"], state["system"], note,
            render(ctx, state["turns"], "base"), render(ctx, state["turns"], "tuned", has_pane=has_tuned),
            *widgets_from(state["settings"]), True]


# ---------------------------------------------------------------------------------------- build
def build(ctx) -> None:
    import gradio as gr

    from core.chat import session
    from core.chat.sampling import preset
    from core.config import ChatConfig, SamplingConfig
    from core.settings import field_info
    from gui.tabs import bind

    t = ctx.t
    models(ctx)  # created with the page, so the Evaluate tab finds the same cache
    fi = {f.name: f for f in field_info(SamplingConfig)}
    ci = {f.name: f for f in field_info(ChatConfig)}

    # ----------------------------------------------------------------------------------- layout
    with gr.Tab(t("chat.tab"), id="chat", elem_id="tab-chat") as tab:
        gr.Markdown(t("chat.intro"))
        with gr.Row(equal_height=True):
            run = gr.Dropdown(choices=target_choices(ctx), value=None, allow_custom_value=True, scale=4,
                              label=t("chat.run"), info=t("chat.run_info"), elem_id="chat-run")
            refresh_btn = gr.Button(t("chat.refresh"), scale=0, min_width=100, elem_id="chat-refresh")
            load_btn = gr.Button(t("chat.load"), variant="primary", scale=0, min_width=120, elem_id="chat-load")
        with gr.Accordion(t("chat.advanced"), open=False):
            base_model = gr.Textbox(label=t("chat.base_model"), info=ci["base_model"].help, elem_id="chat-base-model")
            system = gr.Textbox(label=t("chat.system"), lines=2, placeholder=t("chat.system_placeholder"),
                                elem_id="chat-system")
        status = gr.Markdown(t("chat.pick_and_load"), elem_id="chat-status")
        with gr.Row():
            thinking = gr.Checkbox(value=True, label=t("chat.thinking"), info=fi["thinking"].help,
                                   elem_id="chat-thinking", scale=2)
            seed = gr.Number(value=0, precision=0, minimum=fi["seed"].minimum, label=t("chat.seed"),
                             info=fi["seed"].help, elem_id="chat-seed", scale=1)
            max_new = gr.Number(value=fi["max_new_tokens"].default, precision=0, minimum=fi["max_new_tokens"].minimum,
                                maximum=fi["max_new_tokens"].maximum, label=t("chat.max_new_tokens"),
                                info=fi["max_new_tokens"].help, elem_id="chat-max-new", scale=1)
        with gr.Accordion(t("chat.sampling"), open=False):
            gr.Markdown(t("chat.sampling_note"))
            p = preset(True)
            with gr.Row():
                temperature = gr.Slider(fi["temperature"].minimum, fi["temperature"].maximum, value=p["temperature"],
                                        step=0.05, label=t("chat.temperature"), info=fi["temperature"].help,
                                        elem_id="chat-temperature")
                top_p = gr.Slider(fi["top_p"].minimum, fi["top_p"].maximum, value=p["top_p"], step=0.01,
                                  label=t("chat.top_p"), info=fi["top_p"].help, elem_id="chat-top-p")
            with gr.Row():
                top_k = gr.Slider(0, 200, value=p["top_k"], step=1, label=t("chat.top_k"), info=fi["top_k"].help,
                                  elem_id="chat-top-k")
                min_p = gr.Slider(fi["min_p"].minimum, fi["min_p"].maximum, value=p["min_p"], step=0.01,
                                  label=t("chat.min_p"), info=fi["min_p"].help, elem_id="chat-min-p")
            with gr.Row():
                presence = gr.Slider(fi["presence_penalty"].minimum, fi["presence_penalty"].maximum, value=0.0,
                                     step=0.1, label=t("chat.presence_penalty"), info=fi["presence_penalty"].help,
                                     elem_id="chat-presence")
                greedy = gr.Checkbox(value=False, label=t("chat.greedy"), info=fi["greedy"].help,
                                     elem_id="chat-greedy")
        with gr.Row(equal_height=True):
            with gr.Column():
                base_chat = gr.Chatbot(label=t("chat.base_pane"), height=480, elem_id="chat-base",
                                       buttons=["copy_all"], feedback_options=None, latex_delimiters=LATEX)
            with gr.Column():
                tuned_chat = gr.Chatbot(label=t("chat.tuned_pane"), height=480, elem_id="chat-tuned",
                                        buttons=["copy_all"], feedback_options=None, latex_delimiters=LATEX)
        with gr.Row(equal_height=True):
            prompt = gr.Textbox(show_label=False, placeholder=t("chat.input_placeholder"), lines=2, scale=6,
                                elem_id="chat-input")
            send_btn = gr.Button(t("chat.send"), variant="primary", scale=1, min_width=100, elem_id="chat-send")
            stop_btn = gr.Button(t("chat.stop"), scale=0, min_width=80, elem_id="chat-stop")
            clear_btn = gr.Button(t("chat.clear"), scale=0, min_width=80, elem_id="chat-clear")
        stats = gr.Markdown("", elem_id="chat-stats")
        browser = gr.BrowserState(session.new_state(), storage_key="qwentune-chat", secret=session.browser_secret())
        restored = gr.State(False)

    sampling_inputs = [thinking, temperature, top_p, top_k, min_p, presence, greedy, max_new, seed]

    refresh_btn.click(bind(refresh, ctx), inputs=run, outputs=run)
    load_btn.click(bind(load, ctx), inputs=[run, base_model, browser], outputs=[status, browser, base_chat, tuned_chat])
    send_inputs = [prompt, browser, system, *sampling_inputs]
    send_outputs = [base_chat, tuned_chat, browser, prompt, stats]
    send_evt = send_btn.click(bind(send, ctx), inputs=send_inputs, outputs=send_outputs)
    submit_evt = prompt.submit(bind(send, ctx), inputs=send_inputs, outputs=send_outputs)
    stop_btn.click(None, cancels=[send_evt, submit_evt])
    for trigger in (clear_btn.click, base_chat.clear, tuned_chat.clear):  # the panes' own bin icons too
        trigger(bind(clear, ctx), inputs=browser, outputs=[base_chat, tuned_chat, browser, stats])
    thinking.input(bind(apply_preset, ctx), inputs=thinking, outputs=[temperature, top_p, top_k, min_p])

    # Restore when the tab is first opened, not on page load: Gradio mounts a tab's components (and so
    # reads its BrowserState from the browser's storage) only once the tab is shown.
    tab.select(bind(restore, ctx), inputs=[browser, restored],
               outputs=[run, base_model, system, status, base_chat, tuned_chat, *sampling_inputs, restored])
