"""build_app(): the Gradio Blocks page with every tab, sharing one AppContext."""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

from gui.i18n import Strings


@dataclass
class AppContext:
    """What every tab needs: settings from the command line and shared state."""

    runs_dir: Path
    demo: bool
    lang: str = "en"
    mixes_dir: Path = Path("mixes")
    t: Strings = field(init=False)
    shared: dict = field(default_factory=dict)  # gr.State objects and components tabs share

    def __post_init__(self):
        self.t = Strings(self.lang)


def build_app(runs_dir: str | Path = "runs", demo: bool = True, lang: str = "en",
              mixes_dir: str | Path = "mixes"):
    import gradio as gr

    from gui.tabs import TABS

    ctx = AppContext(runs_dir=Path(runs_dir), demo=demo, lang=lang, mixes_dir=Path(mixes_dir))
    t = ctx.t
    with gr.Blocks(title=t("app.title"), analytics_enabled=False) as app:
        gr.Markdown(f"# {t('app.title')}\n{t('app.subtitle')}")
        mode = t("app.mode_demo") if demo else t("app.mode_gpu", gpus="")
        gr.Markdown(mode, elem_id="mode-banner")
        with gr.Tabs():
            for name in TABS:
                # Tabs land one issue at a time; a tab whose module is not written yet is left out.
                if importlib.util.find_spec(f"gui.tabs.{name}") is not None:
                    importlib.import_module(f"gui.tabs.{name}").build(ctx)
    return app
