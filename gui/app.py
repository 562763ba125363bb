"""The page frame: one Gradio Blocks per language, every tab sharing one AppContext, all served by
one local web server.

Languages: each language gets its own Blocks, built from the same tab code with ``ctx.t`` bound to
that language, and mounted at ``/<lang>/`` (``/`` redirects to the ``--lang`` default). The header's
language links just navigate, so tabs need no special work to be translated - their strings come
from ``ctx.t`` at build time and from ``ctx.t`` in their event handlers. Nothing in a Blocks is
shared between languages except what lives on disk (runs, mixes, presets), which is where the
app keeps its state anyway.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gui.i18n import LANGS, Strings

ROOT = Path(__file__).resolve().parent.parent
PRESETS_DIR = ROOT / "presets" / "train"

# Layout tweaks only; fonts stay the theme's local ones (nothing is fetched from a font CDN).
CSS = """
#qt-header { align-items: center; }
#qt-header h1 { margin-bottom: 0; }
#lang-switch { text-align: right; }
#lang-switch a { margin-left: .8em; text-decoration: none; }
#lang-switch a.current { font-weight: 600; text-decoration: underline; }
#mode-banner { padding: .4em .8em; border-radius: 6px; background: var(--block-background-fill); }
/* Wide tables (Data counts and sources, Runs): every column visible, header words whole. Gradio's
   cells break words anywhere ("Dr/op/pe/d") once a column is narrow; compact sans-serif cells and
   whole-word headers let the columns take the width their words need. */
.qt-table table { font-size: 13px; }
.qt-table td, .qt-table th, .qt-table td *, .qt-table th * { font-family: var(--font) !important; }
.qt-table .cell-wrap { padding: 4px 6px; }
.qt-table th .cell-wrap, .qt-table th .cell-wrap * { word-break: normal !important; overflow-wrap: normal !important;
  hyphens: none; }
.qt-table td .cell-wrap, .qt-table td .cell-wrap * { word-break: normal !important;
  overflow-wrap: break-word !important; }
"""

# Switching language keeps the open tab: the language link carries it as #<tab id>, and the new
# page opens that tab once its buttons exist.
KEEP_TAB_JS = """
() => {
  document.addEventListener("click", (event) => {
    const link = event.target.closest("#lang-switch a");
    const tab = document.querySelector("#main-tabs [role=tab][aria-selected=true]");
    if (link && tab && tab.dataset.tabId) {
      link.href = link.getAttribute("href").split("#")[0] + "#" + tab.dataset.tabId;
    }
  }, true);
  const wanted = decodeURIComponent(location.hash.slice(1));
  if (!/^[\\w-]+$/.test(wanted)) return;
  const open = (tries) => {
    const button = document.getElementById("tab-" + wanted + "-button");
    if (button) button.click();
    else if (tries > 0) setTimeout(() => open(tries - 1), 200);
  };
  open(50);
  // A chart drawn while its tab was hidden (or before the window was resized) keeps a wrong width:
  // when a tab is shown, tell the charts the window changed so they fit their box again.
  document.addEventListener("click", (event) => {
    if (!event.target.closest("#main-tabs [role=tab]")) return;
    for (const delay of [50, 400]) setTimeout(() => window.dispatchEvent(new Event("resize")), delay);
  }, true);
}
"""


@dataclass
class AppContext:
    """What every tab needs: settings from the command line, strings, and shared components.

    ``shared`` holds components and ``gr.State`` objects tabs share *within one page* (one
    language), by a documented key (e.g. ``"train.fields"``). A tab built before the tab that
    registers a key cannot see it at build time; wire such events in ``ctx.after_build`` callbacks,
    which run once every tab exists.

    ``server`` is one dict shared by every language's page of this server process: keep there what
    must exist once per process whichever page the user is on (the loaded chat model, running
    download jobs). It replaces module-level state; guard it with a lock where handlers race.
    """

    runs_dir: Path
    demo: bool
    lang: str = "en"
    mixes_dir: Path = Path("mixes")
    presets_dir: Path = PRESETS_DIR
    gpu_names: list[str] = field(default_factory=list)
    t: Strings = field(init=False)
    shared: dict = field(default_factory=dict)
    after_build: list = field(default_factory=list)  # callables run once every tab is built
    server: dict = field(default_factory=dict)  # shared by every language's page (see above)
    blocks: Any = None  # this page's gr.Blocks, e.g. for ``ctx.blocks.load(fn, ...)`` on page load

    def __post_init__(self):
        self.t = Strings(self.lang)
        # Resolved once: every run and mix the page lists, starts or remembers is then named by one
        # absolute path, whatever the folder was given as (``make run`` passes the relative runs/).
        self.runs_dir = Path(self.runs_dir).expanduser().resolve()
        self.mixes_dir = Path(self.mixes_dir).expanduser().resolve()
        self.presets_dir = Path(self.presets_dir)


def _lang_links(lang: str) -> str:
    # Relative links: the page lives at /<lang>/, so ../<other>/ works behind any proxy prefix too.
    links = []
    for code, label in LANGS.items():
        cls = "current" if code == lang else ""
        links.append(f'<a id="lang-{code}" class="{cls}" href="../{code}/" hreflang="{code}">{label}</a>')
    return "".join(links)


def mode_text(ctx: AppContext, model: str | None = None) -> str:
    """The header's mode line. In demo mode it follows the Train tab's model: once a real model is
    in the form (e.g. from the Hardware tab's "Use this model") the banner says so, instead of
    claiming the demo model is selected."""
    t = ctx.t
    if ctx.demo:
        from core.demo import is_demo

        if model and not is_demo(model.strip()):
            return t("app.mode_demo_real", model=model.strip())
        return t("app.mode_demo")
    names = ", ".join(ctx.gpu_names) if ctx.gpu_names else t("app.gpu_unknown")
    return t("app.mode_gpu", gpus=names)


def banner_for_model(ctx: AppContext, model) -> str:
    """Handler: the mode line after the Train tab's model changed."""
    return mode_text(ctx, model or "")


def _wire_banner(ctx: AppContext, banner) -> None:
    from gui.tabs import bind

    field = (ctx.shared.get("train.fields") or {}).get("model.name_or_path")
    if field is not None and ctx.demo:
        field.change(bind(banner_for_model, ctx), inputs=field, outputs=banner, show_progress="hidden")


def build_app(runs_dir: str | Path = "runs", demo: bool = True, lang: str = "en",
              mixes_dir: str | Path = "mixes", presets_dir: str | Path | None = None,
              gpu_names: list[str] | None = None, server_state: dict | None = None):
    """One language's page: header (title, language links, mode, presets) and every tab.
    ``server_state`` is the dict every language's page shares (AppContext.server)."""
    import gradio as gr

    from gui import presets as presets_ui
    from gui.tabs import TABS

    ctx = AppContext(runs_dir=Path(runs_dir), demo=demo, lang=lang, mixes_dir=Path(mixes_dir),
                     presets_dir=Path(presets_dir) if presets_dir else PRESETS_DIR,
                     gpu_names=list(gpu_names or []))
    if server_state is not None:
        ctx.server = server_state
    t = ctx.t
    with gr.Blocks(title=t("app.title"), analytics_enabled=False) as app:
        ctx.blocks = app
        with gr.Row(elem_id="qt-header", equal_height=True):
            with gr.Column(scale=4):
                gr.Markdown(f"# {t('app.title')}\n{t('app.subtitle')}")
            with gr.Column(scale=1, min_width=200):
                gr.HTML(_lang_links(lang), elem_id="lang-switch")
        banner = gr.Markdown(mode_text(ctx), elem_id="mode-banner")
        ctx.shared["app.banner"] = banner
        presets_section = presets_ui.build_section(ctx)
        with gr.Tabs(elem_id="main-tabs"):
            for name in TABS:
                importlib.import_module(f"gui.tabs.{name}").build(ctx)
        presets_ui.wire(ctx, presets_section)
        _wire_banner(ctx, banner)
        for hook in ctx.after_build:
            hook()
    app.qt_ctx = ctx  # for tests and the server: which tabs were built, what was shared
    return app


def detect_gpu_names() -> list[str]:
    """GPU names and memory for the mode banner; empty when NVML finds none (detect never raises)."""
    from core.hardware.detect import detect

    return [f"{gpu.name} ({gpu.total_gib:.0f} GiB)" for gpu in detect().gpus]


def build_server(runs_dir: str | Path = "runs", demo: bool = True, lang: str = "en",
                 mixes_dir: str | Path = "mixes", auth: tuple[str, str] | None = None,
                 host: str = "127.0.0.1", port: int = 7860, presets_dir: str | Path | None = None):
    """A FastAPI app serving every language's page at /<lang>/; / redirects to ``lang``."""
    import gradio as gr
    from fastapi import FastAPI
    from fastapi.responses import RedirectResponse

    if lang not in LANGS:
        raise ValueError(f"unknown language {lang!r}; choose one of {sorted(LANGS)}")
    gpu_names = [] if demo else detect_gpu_names()
    server = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    @server.get("/", include_in_schema=False)
    def _root():
        return RedirectResponse(url=f"./{lang}/", status_code=307)

    theme = gr.themes.Default()
    server_state: dict = {}
    server.state.pages = {}
    for code in LANGS:
        blocks = build_app(runs_dir=runs_dir, demo=demo, lang=code, mixes_dir=mixes_dir,
                           presets_dir=presets_dir, gpu_names=gpu_names, server_state=server_state)
        # No blocks.queue(...): every Blocks already queues, one call per event listener at a time
        # (a double-clicked "Start" runs once after the other), and queue() rebuilds the app: slower.
        gr.mount_gradio_app(
            server, blocks, path=f"/{code}", server_name=host, server_port=port, auth=auth,
            show_error=True, theme=theme, css=CSS, js=KEEP_TAB_JS,
            # Gradio's in-browser run history can connect a cloud bucket; this app keeps runs on disk.
            run_history=False, footer_links=["api", "settings"], ssr_mode=False, mcp_server=False,
        )
        server.state.pages[code] = blocks
    return server
