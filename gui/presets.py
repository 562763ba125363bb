"""The header's presets section: load a presets/train/*.yaml into the Train tab, save the Train tab's
settings as a preset. Layout and wiring only; listing, checking and writing live in core.presets.

Hook (documented contract with gui/tabs/train.py): the Train tab registers
``ctx.shared["train.fields"] = {dotted RunConfig path: component}`` - e.g. ``"model.name_or_path"``,
``"lora.r"``, ``"train.learning_rate"``, ``"data.mix_dir"`` - for each widget that edits a setting,
holding the value in RunConfig's units. Paths the Train tab does not show are left alone on load
and take their defaults on save.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

TRAIN_FIELDS = "train.fields"


@dataclass
class PresetsSection:
    choice: Any
    refresh: Any
    load: Any
    name: Any
    overwrite: Any
    save: Any
    status: Any
    about: Any


def _choices(ctx) -> list[str]:
    from core.presets import list_presets

    return [info.name for info in list_presets(ctx.presets_dir)]


def build_section(ctx) -> PresetsSection:
    import gradio as gr

    t = ctx.t
    names = _choices(ctx)
    with gr.Accordion(t("presets.title"), open=False, elem_id="presets"):
        gr.Markdown(t("presets.help"))
        with gr.Row(equal_height=True):
            choice = gr.Dropdown(choices=names, value=None, label=t("presets.choose"), scale=3,
                                 elem_id="preset-choice", allow_custom_value=False)
            refresh = gr.Button(t("presets.refresh"), size="sm", scale=0, min_width=90, elem_id="preset-refresh")
            load = gr.Button(t("presets.load"), variant="primary", size="sm", scale=1, elem_id="preset-load")
        about = gr.Markdown(elem_id="preset-about")
        with gr.Row(equal_height=True):
            name = gr.Textbox(label=t("presets.save_name"), placeholder=t("presets.save_placeholder"),
                              scale=3, elem_id="preset-name")
            overwrite = gr.Checkbox(label=t("presets.overwrite"), value=False, scale=1,
                                    elem_id="preset-overwrite")
            save = gr.Button(t("presets.save"), size="sm", scale=1, elem_id="preset-save")
        status = gr.Markdown(elem_id="preset-status")
    return PresetsSection(choice, refresh, load, name, overwrite, save, status, about)


def load_into(ctx, paths: list[str], name: str | None) -> list:
    """[status message, one update per path]: the preset's values for the Train tab's fields."""
    import gradio as gr

    from core.presets import load_preset
    from core.settings import ConfigError

    t = ctx.t
    if not name:
        return [t("presets.pick_first")] + [gr.skip() for _ in paths]
    try:
        values = load_preset(name, ctx.presets_dir)
    except ConfigError as exc:
        return [t("presets.error", error=str(exc))] + [gr.skip() for _ in paths]
    updates = [gr.update(value=values[p]) if p in values else gr.skip() for p in paths]
    used = sum(p in values for p in paths)
    message = t("presets.loaded", name=name, count=used)
    if "data.mix" in values and "data.mix" not in paths:
        # The Train tab trains on saved mixes; an inline mix runs from the CLI only.
        message += "  \n" + t("presets.inline_mix")
    return [message] + updates


def save_from(ctx, paths: list[str], name: str, overwrite: bool, values: list) -> tuple:
    """(status message, preset dropdown update) after saving the Train tab's values as a preset."""
    import gradio as gr

    from core.presets import save_preset
    from core.settings import ConfigError

    t = ctx.t
    try:
        path = save_preset(name, dict(zip(paths, values)), ctx.presets_dir, overwrite=bool(overwrite))
    except FileExistsError:
        return t("presets.exists", name=name), gr.skip()
    except ConfigError as exc:
        return t("presets.error", error=str(exc)), gr.skip()
    return t("presets.saved", path=str(path)), gr.update(choices=_choices(ctx), value=path.stem)


def describe(ctx, name: str | None) -> str:
    from core.presets import list_presets

    for info in list_presets(ctx.presets_dir) if name else []:
        if info.name == name:
            return info.description.replace("\n", "  \n")
    return ""


def wire(ctx, s: PresetsSection) -> None:
    """Connect the buttons; runs after every tab is built, so the Train tab's fields exist."""
    import gradio as gr

    t = ctx.t
    s.choice.change(lambda name: describe(ctx, name), inputs=s.choice, outputs=s.about)
    s.refresh.click(lambda: gr.update(choices=_choices(ctx)), outputs=s.choice)

    fields: dict = ctx.shared.get(TRAIN_FIELDS) or {}
    if not fields:
        reason = t("presets.no_train")
        s.load.click(lambda: reason, outputs=s.status)
        s.save.click(lambda: reason, outputs=s.status)
        return
    paths = list(fields)
    components = [fields[p] for p in paths]
    s.load.click(lambda name: load_into(ctx, paths, name), inputs=s.choice, outputs=[s.status, *components])
    s.save.click(lambda name, overwrite, *values: save_from(ctx, paths, name, overwrite, list(values)),
                 inputs=[s.name, s.overwrite, *components], outputs=[s.status, s.choice])
