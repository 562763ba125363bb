"""Data tab: add sources (sample, file, hub id), set ratios or counts, see live counts and drops,
preview the rendered rows with the trained tokens highlighted, the token-length histogram, and save
the mix into ``ctx.mixes_dir`` for the Train tab.

Everything it computes comes from core.data (build_mix, render, preview, stats); this file only lays
out widgets and wires events; the handlers are module-level functions ``fn(ctx, *values)`` (tests
call them without a Blocks app). The browser keeps the sources (a list of SourceConfig dicts, in a
gr.BrowserState: they survive a page reload); per page session it keeps a SourceCache (so changing
a ratio re-mixes at once) and the last MixResult. Tokenizers are loaded once per server process, in
``ctx.server["data.tokenizers"]``. A saved mix can be opened again for editing: its manifest
records the MixConfig it was built from.
"""

# No `from __future__ import annotations`: Gradio inspects handler annotations at wiring time.
import html
import threading
from pathlib import Path

# The counts table's columns: core's table_rows() keys, the three token lengths in one column so
# that every column fits beside the settings.
COLUMNS = ("source", "formats", "read", "usable", "dropped", "share", "used", "repeated", "tokens", "over_max")
# Shares of the table's width (Gradio otherwise sizes columns from the first rows and hides the last).
COLUMN_WIDTHS = ["12%", "14%", "7%", "9%", "10%", "7%", "6%", "10%", "15%", "10%"]
SOURCE_COLUMN_WIDTHS = ["7%", "22%", "38%", "14%", "19%"]
SOURCE_COLUMNS = ("n", "name", "path", "format", "share")
MIX_FIELDS = ("seed", "max_seq_len", "overlong", "upsample", "total", "eval_fraction", "shuffle",
              "reasoning_turns", "dedupe", "kind")
# The preset offered first: the SFT mix of Unsloth's Qwen3 recipe (the others are for later stages).
DEFAULT_PRESET = "reasoning75_chat25"
# The "add a source" form's widgets, in the order form_source() takes them.
FORM_FIELDS = ("kind", "sample", "path", "hub_id", "hub", "split", "subset", "limit", "name", "format",
               "share_mode", "share", "columns", "instruction_in", "system_prompt", "min_tokens", "max_tokens")


def _label(ctx, path) -> str:
    return ctx.t.setting_label("data", path)


def _help(ctx, info) -> str:
    return ctx.t.setting_help("data", info)


def tokenizer_for_choice(ctx, name_or_path: str) -> str:
    """The tokenizer box's value for the model chosen in the Train tab: the demo tokenizer for the
    demo model, else that model's real one (its folder's, or the shared Qwen3 tokenizer)."""
    from core.data.tokenizer import tokenizer_for_model

    return tokenizer_for_model(name_or_path)


def _tokenizer(ctx, spec: str):
    """Tokenizers are loaded once per server process and shared by every page."""
    from core.data.tokenizer import load_tokenizer

    spec = (spec or "qwen3").strip() or "qwen3"
    store = ctx.server.setdefault("data.tokenizers", {})
    lock = ctx.server.setdefault("data.tokenizers.lock", threading.Lock())
    with lock:
        if spec not in store:
            store[spec] = load_tokenizer(spec)
        return store[spec]


def _error_text(ctx, exc: Exception) -> str:
    from core.settings import ConfigError

    if isinstance(exc, ConfigError):
        return "✗ " + ctx.t("data.error", message=str(exc))
    return "✗ " + ctx.t("data.unexpected", message=f"{type(exc).__name__}: {exc}")


# ------------------------------------------------------------------------------------ helpers
def source_row(i: int, s: dict) -> list:
    if s.get("count") is not None:
        share = f"{s['count']} rows"
    elif s.get("ratio") is not None:
        share = f"ratio {s['ratio']:g}"
    else:
        share = "all rows"
    from core.data.sources import default_name, source_kind

    where = s["path"] + (f" [{s.get('split')}]" if s.get("hub") in ("hf", "modelscope") else "")
    name = s.get("name") or default_name(s["path"], source_kind(s["path"], s.get("hub", "auto")))
    return [i + 1, name, where, s.get("format", "auto"), share]


def mix_config(sources: list, settings: dict):
    """The MixConfig of the form, checked by the same code as YAML files (errors name the field)."""
    from core.config import MixConfig
    from core.settings import from_dict

    data = {k: v for k, v in settings.items() if v is not None}
    data["sources"] = sources
    for key in ("seed", "max_seq_len", "total"):
        if key in data:
            data[key] = int(data[key])
    return from_dict(MixConfig, data)


def counts_table(t, result) -> list[list]:
    rows = []
    for r in result.table_rows():
        r = dict(r, tokens=f"{r['p50']:,} · {r['p95']:,} · {r['max']:,}")
        rows.append([r[c] for c in COLUMNS])
    total = [""] * len(COLUMNS)
    total[0], total[COLUMNS.index("used")] = t("data.total"), result.total
    rows.append(total)
    return rows


def drops_markdown(t, result) -> str:
    """Every problem of every source, from core.data.report: dropped rows and rows kept with a warning."""
    from core.data.report import problem_rows

    lines = []
    for r in problem_rows(result):
        examples = "; ".join(html.escape(e) for e in r["examples"])
        action = t(f"data.action.{r['action'].replace(' ', '_')}")
        lines.append(f"- **{html.escape(r['source'])}** · {html.escape(r['kind'])} × {r['count']} "
                     f"({action}) — {examples}")
    return (f"**{t('data.drops')}**\n" + "\n".join(lines)) if lines else t("data.no_drops")


def warnings_markdown(t, result, overlong: str) -> str:
    parts = [f"⚠ {html.escape(w)}" for w in result.warnings]
    over = sum(s.length_stats.get("over_max", 0) for s in result.sources)
    if overlong == "truncate":
        parts.insert(0, "⚠ " + t("data.truncate_warning", n=over))
    elif over:
        parts.insert(0, "ℹ " + t("data.dropped_long", n=over, max=result.config.max_seq_len))
    return "\n\n".join(parts)


def preview_rows(result, source: str) -> list:
    rows = list(result.train) + list(result.eval)
    if source and source != "*":
        rows = [c for c in rows if c.source == source]
    return rows


def preview_page(ctx, result, tokenizer, source: str, index: int, assistant_only: bool, empty_think: bool) -> tuple:
    """(HTML of row ``index`` as it will be trained, the index shown). An SFT row is shown with its
    trained tokens highlighted, a preference row as prompt / chosen / rejected, a prompt row as the
    prompt and its reference answer."""
    from core.data.preview import preference_html, preview_html, prompt_html, render_preview
    from core.data.render import MaskOptions, count_tokens, render_preference, render_prompt

    t = ctx.t
    rows = preview_rows(result, source) if result is not None else []
    if not rows:
        return f"<p>{html.escape(t('data.preview_empty'))}</p>", 0
    index = max(0, min(int(index or 0), len(rows) - 1))
    conv = rows[index]
    cfg = result.config
    where = {"i": index + 1, "n": len(rows), "source": conv.source, "origin": conv.origin}
    if conv.kind == "preference":
        pair = render_preference(conv, tokenizer)
        p, c, r = count_tokens([pair.prompt, pair.chosen, pair.rejected], tokenizer)
        title = t("data.preview_title_preference", **where, prompt=p, chosen=c, rejected=r)
        labels = (t("data.part.prompt"), t("data.part.chosen"), t("data.part.rejected"))
        return preference_html(pair, labels, title=title, legend=t("data.preview_legend_preference")), index
    if conv.kind == "prompt":
        prompt = render_prompt(conv, tokenizer)
        title = t("data.preview_title_prompt", **where, tokens=count_tokens([prompt], tokenizer)[0])
        labels = (t("data.part.prompt"), t("data.part.answer"))
        return prompt_html(prompt, str(conv.meta.get("expected_answer", "")), labels, title=title,
                           legend=t("data.preview_legend_prompt")), index
    rendered = render_preview(conv, tokenizer, options=MaskOptions(assistant_only=assistant_only,
                                                                  train_empty_think=empty_think),
                              max_len=cfg.max_seq_len, truncate=cfg.overlong == "truncate")
    title = t("data.preview_title", **where, tokens=rendered.n_tokens, trained=rendered.n_trained)
    return preview_html(rendered, title=title, legend=t("data.preview_legend")), index


def histogram(ctx, result):
    from core.data.stats import histogram_figure

    lengths = {s.name: s.lengths for s in result.sources}
    return histogram_figure(lengths, result.config.max_seq_len, title=ctx.t("data.hist_title"),
                            line_label="max_seq_len")


# ------------------------------------------------------------------------------------ handlers
# Event handlers: ``fn(ctx, *values) -> updates``, wired with functools.partial in build(). They
# return plain values and gr.update(...) objects, so tests call them without a Blocks app.
def settings_dict(*values) -> dict:
    """The mix settings widgets' values (in MIX_FIELDS order) as a dict."""
    return dict(zip(MIX_FIELDS, values))


def form_source(ctx, kind_v, sample_v, path_v, hub_id_v, hub_v, split_v, subset_v, limit_v, name_v, fmt_v,
                mode_v, share_v, columns_v, instr_v, system_v, min_v, max_v) -> dict:
    """The "add a source" form (FORM_FIELDS order) as a checked SourceConfig dict."""
    from core.config import SourceConfig
    from core.data.formats import parse_columns
    from core.settings import ConfigError, from_dict, to_dict

    if kind_v == "sample":
        src = {"path": sample_v or "", "hub": "auto"}
    elif kind_v == "file":
        src = {"path": (path_v or "").strip(), "hub": "local"}
    else:
        src = {"path": (hub_id_v or "").strip(), "hub": hub_v, "split": (split_v or "train").strip(),
               "subset": (subset_v or "").strip(), "limit": int(limit_v or 0)}
    if not src["path"]:
        raise ConfigError(ctx.t("data.need_path"), "path")
    src.update(name=(name_v or "").strip(), format=fmt_v or "auto", columns=parse_columns(columns_v),
               instruction_in=instr_v or "user", system_prompt=system_v or "",
               min_tokens=int(min_v or 0), max_tokens=int(max_v or 0))
    if mode_v == "ratio":
        src["ratio"] = float(share_v if share_v is not None else 1)
    elif mode_v == "count":
        src["count"] = int(share_v or 0)
    return to_dict(from_dict(SourceConfig, src))


def sources_view(ctx, sources: list) -> tuple:
    """(sources table rows, update of the "pick a source" dropdown: the last one picked)."""
    import gradio as gr

    choices = [(f"{i + 1}. {s.get('name') or s['path']}", i) for i, s in enumerate(sources)]
    return ([source_row(i, s) for i, s in enumerate(sources)],
            gr.update(choices=choices, value=choices[-1][1] if choices else None))


def _preview_sources(ctx, names=()) -> dict:
    return {"choices": [(ctx.t("data.all_sources"), "*")] + [(n, n) for n in names]}


def rebuild(ctx, sources, cache, tok_spec, *settings, progress=None) -> tuple:
    """Re-mix with the cached sources; every output of the mix panel (MIX_OUTPUTS order)."""
    import gradio as gr

    from core.data.mix import SourceCache, build_mix
    from core.settings import dump_yaml

    t = ctx.t
    cfg_yaml = ""
    if not sources:
        return (t("data.start"), [], "", "", None, None, cache, gr.update(**_preview_sources(ctx), value="*"), "")
    try:
        cfg = mix_config(sources, settings_dict(*settings))
        cfg_yaml = dump_yaml(cfg)
        tok = _tokenizer(ctx, tok_spec)
        cache = cache or SourceCache()
        result = build_mix(cfg, tok, progress=_progress_fn(progress), cache=cache)
    except Exception as exc:  # shown in the page: bad input must never break the app
        return (_error_text(ctx, exc), [], "", "", None, None, cache, gr.update(), cfg_yaml)
    done = t("data.built", total=result.total, train=len(result.rows), eval=len(result.eval_rows))
    done += "\n\n" + t(f"data.kind_report.{result.kind}")
    return (done, counts_table(t, result), warnings_markdown(t, result, cfg.overlong), drops_markdown(t, result),
            histogram(ctx, result), result, cache, gr.update(**_preview_sources(ctx, [s.name for s in result.sources])),
            cfg_yaml)


def _progress_fn(progress):
    """core.data's progress callback (fraction, message) -> a gr.Progress, or nothing."""
    if progress is None:
        return None
    return lambda fraction, message: progress(fraction, desc=message)


def show_preview(ctx, result, tok_spec, source, index, assistant_only, empty_think) -> tuple:
    """(preview HTML, the 1-based row number shown) for row ``index`` (1-based) of ``source``."""
    import gradio as gr

    if result is None:
        return f"<p>{html.escape(ctx.t('data.preview_empty'))}</p>", gr.update()
    try:
        page, i = preview_page(ctx, result, _tokenizer(ctx, tok_spec), source, int(index or 1) - 1,
                               assistant_only, empty_think)
    except Exception as exc:  # shown in the page
        return f"<p>{html.escape(_error_text(ctx, exc))}</p>", gr.update()
    return page, i + 1


def preview_prev(ctx, result, tok_spec, source, index, assistant_only, empty_think) -> tuple:
    return show_preview(ctx, result, tok_spec, source, int(index or 1) - 1, assistant_only, empty_think)


def preview_next(ctx, result, tok_spec, source, index, assistant_only, empty_think) -> tuple:
    return show_preview(ctx, result, tok_spec, source, int(index or 1) + 1, assistant_only, empty_think)


def _valid_index(sources, index) -> bool:
    return index is not None and 0 <= int(index) < len(sources)


def add_source(ctx, sources, *form) -> tuple:
    """(sources, table, pick dropdown, form message) after adding the form's source."""
    try:
        src = form_source(ctx, *form)
    except Exception as exc:  # shown beside the form; the sources stay as they were
        return sources, *sources_view(ctx, sources), _error_text(ctx, exc)
    sources = list(sources or []) + [src]
    return sources, *sources_view(ctx, sources), "✓ " + ctx.t("data.added", path=src["path"])


def update_source(ctx, sources, index, *form) -> tuple:
    import gradio as gr

    sources = list(sources or [])
    if not _valid_index(sources, index):
        return sources, *sources_view(ctx, sources), "✗ " + ctx.t("data.pick_first")
    try:
        src = form_source(ctx, *form)
    except Exception as exc:  # shown beside the form
        return sources, *sources_view(ctx, sources), _error_text(ctx, exc)
    sources[int(index)] = src
    table, pick_update = sources_view(ctx, sources)
    return sources, table, gr.update(choices=pick_update["choices"], value=int(index)), "✓ " + ctx.t("data.updated")


def remove_source(ctx, sources, index) -> tuple:
    sources = list(sources or [])
    if not _valid_index(sources, index):
        return sources, *sources_view(ctx, sources), "✗ " + ctx.t("data.pick_first")
    sources = [s for i, s in enumerate(sources) if i != int(index)]
    return sources, *sources_view(ctx, sources), "✓ " + ctx.t("data.removed")


def edit_source(ctx, sources, index) -> list:
    """Load the picked source into the form: FORM_FIELDS, the three kind boxes' visibility, message."""
    import gradio as gr

    sources = list(sources or [])
    if not _valid_index(sources, index):
        return [gr.update()] * (len(FORM_FIELDS) + 3) + ["✗ " + ctx.t("data.pick_first")]
    s = sources[int(index)]
    is_hub = s["hub"] in ("hf", "modelscope")
    is_sample = s["path"].startswith("samples/")
    k = "hub" if is_hub else "sample" if is_sample else "file"
    mode = "count" if s.get("count") is not None else "ratio" if s.get("ratio") is not None else "all"
    value = s.get("count") if mode == "count" else s.get("ratio") if mode == "ratio" else 1
    cols = "\n".join(f"{a}: {b}" for a, b in (s.get("columns") or {}).items())
    return [k, s["path"] if is_sample else gr.update(), s["path"] if k == "file" else "",
            s["path"] if is_hub else "", s["hub"] if is_hub else "hf", s.get("split", "train"),
            s.get("subset", ""), s.get("limit", 0), s.get("name", ""), s.get("format", "auto"), mode, value,
            cols, s.get("instruction_in", "user"), s.get("system_prompt", ""), s.get("min_tokens", 0),
            s.get("max_tokens", 0), *kind_visibility(ctx, k), ""]


def load_preset(ctx, preset_name) -> list:
    """A shipped mix preset: sources, table, pick dropdown, MIX_FIELDS values, form message."""
    import gradio as gr

    from core.config import load_mix_config
    from core.data.sources import MIX_PRESETS_DIR
    from core.settings import to_dict

    try:
        cfg = load_mix_config(MIX_PRESETS_DIR / f"{preset_name}.yaml")
    except Exception as exc:  # shown in the page
        return [gr.update()] * (3 + len(MIX_FIELDS)) + [_error_text(ctx, exc)]
    sources = [to_dict(s) for s in cfg.sources]
    return [sources, *sources_view(ctx, sources), *[getattr(cfg, f) for f in MIX_FIELDS],
            "✓ " + ctx.t("data.preset_loaded", name=preset_name)]


def saved_mixes(ctx) -> list[tuple[str, str]]:
    """(name, folder) of every mix saved in ctx.mixes_dir, newest first."""
    from gui.tabs.train import mix_choices

    return mix_choices(ctx)


def refresh_saved(ctx, current):
    import gradio as gr

    choices = saved_mixes(ctx)
    values = [v for _n, v in choices]
    return gr.update(choices=choices, value=current if current in values else (values[0] if values else None))


def open_mix(ctx, mix_dir) -> list:
    """A saved mix back in the form for editing: sources, table, pick dropdown, MIX_FIELDS values,
    the save name (its own), form message. The settings come from the mix's manifest."""
    import gradio as gr

    from core.config import MixConfig
    from core.data.mixdir import read_manifest
    from core.settings import ConfigError, from_dict, to_dict

    keep = [gr.update()] * (4 + len(MIX_FIELDS))
    if not mix_dir:
        return keep + ["✗ " + ctx.t("data.pick_saved_mix")]
    try:
        manifest = read_manifest(mix_dir)
        config = manifest.get("config")
        if not isinstance(config, dict):
            raise ConfigError(ctx.t("data.mix_without_config"), "config", str(Path(mix_dir) / "manifest.json"))
        cfg = from_dict(MixConfig, config, source=str(Path(mix_dir) / "manifest.json"))
    except (ConfigError, OSError, ValueError) as exc:  # shown in the page
        return keep + [_error_text(ctx, exc if isinstance(exc, ConfigError) else ConfigError(str(exc)))]
    sources = [to_dict(s) for s in cfg.sources]
    name = Path(mix_dir).name
    return [sources, *sources_view(ctx, sources), *[getattr(cfg, f) for f in MIX_FIELDS], name,
            "✓ " + ctx.t("data.mix_opened", name=name, replace=ctx.t("data.overwrite"))]


def restore_sources(ctx, sources, done) -> tuple:
    """On the tab's first opening: the sources this browser kept (a page reload loses nothing).
    (sources, table, pick dropdown, form message, restored flag)."""
    import gradio as gr

    if done:
        return gr.skip(), gr.skip(), gr.skip(), gr.skip(), True
    kept = [s for s in (sources or []) if isinstance(s, dict) and s.get("path")]
    if not kept:
        return [], gr.skip(), gr.skip(), gr.skip(), True
    try:
        kept = [_checked_source(s) for s in kept]
    except Exception:  # stored by an older version: start empty rather than break the page
        return [], gr.skip(), gr.skip(), gr.skip(), True
    table, pick = sources_view(ctx, kept)
    return kept, table, pick, "ℹ " + ctx.t("data.restored", n=len(kept)), True


def _checked_source(src: dict) -> dict:
    from core.config import SourceConfig
    from core.settings import from_dict, to_dict

    return to_dict(from_dict(SourceConfig, src))


def on_upload(ctx, file, name_v) -> tuple:
    """(path box, name box, form message) after a file upload: the stored copy's path."""
    import gradio as gr

    from core.data.sources import store_upload

    if not file:
        return gr.update(), gr.update(), ""
    src = file if isinstance(file, str) else getattr(file, "name", None) or file.get("path")
    try:
        stored = store_upload(src, ctx.mixes_dir / ".uploads")
    except Exception as exc:  # shown in the page
        return gr.update(), gr.update(), _error_text(ctx, exc)
    # The stored copy carries a hash prefix; the report should show the file's own name.
    return str(stored), name_v or Path(src).stem, "✓ " + ctx.t("data.uploaded", path=str(stored))


def save(ctx, sources, cache, tok_spec, save_name_v, overwrite_v, *settings, progress=None) -> tuple:
    """(save message, source cache): build the mix and write it to ctx.mixes_dir/<name>."""
    from core.data.mix import SourceCache, build_mix, check_mix_name, save_mix

    t = ctx.t
    if not sources:
        return "✗ " + t("data.need_sources"), cache
    try:
        mix_name = check_mix_name(save_name_v)
        cfg = mix_config(sources, settings_dict(*settings))
        cache = cache or SourceCache()
        result = build_mix(cfg, _tokenizer(ctx, tok_spec), progress=_progress_fn(progress), cache=cache)
        out = save_mix(result, ctx.mixes_dir / mix_name, overwrite=bool(overwrite_v))
    except Exception as exc:  # shown in the page
        return _error_text(ctx, exc), cache
    return "✓ " + t("data.saved", name=mix_name, path=str(out), total=result.total), cache


def kind_visibility(ctx, kind_v) -> tuple:
    """Visibility of the sample / file / hub boxes for the chosen kind of source."""
    import gradio as gr

    return tuple(gr.update(visible=kind_v == k) for k in ("sample", "file", "hub"))


def no_op(ctx) -> None:
    """The first step of a chain whose work is all in the .then() steps."""
    return None


# -------------------------------------------------------------------------------------- build
def build(ctx) -> None:
    import gradio as gr

    from core.chat.session import browser_secret
    from core.config import FORMATS, MixConfig, SourceConfig
    from core.data.sources import MIX_PRESETS_DIR, list_samples
    from core.settings import field_info
    from gui.tabs import bind

    t = ctx.t
    minfo = {f.path: f for f in field_info(MixConfig)}
    sinfo = {f.path: f for f in field_info(SourceConfig)}
    presets = sorted(p.stem for p in MIX_PRESETS_DIR.glob("*.yaml")) if MIX_PRESETS_DIR.is_dir() else []
    samples = list_samples()

    def num(path, info, **kw):
        return gr.Number(value=info.default, label=_label(ctx, path), info=_help(ctx, info),
                         minimum=info.minimum, maximum=info.maximum, elem_id=f"data-{path.replace('_', '-')}", **kw)

    with gr.Tab(t("data.tab"), id="data", elem_id="tab-data") as tab:
        gr.Markdown(t("data.intro"))
        # The sources live in the browser: a page reload (or a server restart) keeps them.
        sources_state = gr.BrowserState([], storage_key="qwentune-data-sources", secret=browser_secret())
        restored = gr.State(False)
        cache_state = gr.State(None)
        result_state = gr.State(None)
        with gr.Row():
            # ----------------------------------------------------------------- sources
            with gr.Column(scale=5):
                gr.Markdown(f"### {t('data.sources')}")
                with gr.Row():
                    preset = gr.Dropdown(choices=presets, value=DEFAULT_PRESET if DEFAULT_PRESET in presets
                                         else (presets[0] if presets else None),
                                         label=t("data.preset"), scale=3, elem_id="data-preset")
                    preset_load = gr.Button(t("data.preset_load"), scale=1, elem_id="data-preset-load")
                with gr.Row():
                    mixes_saved = saved_mixes(ctx)
                    saved = gr.Dropdown(choices=mixes_saved, value=mixes_saved[0][1] if mixes_saved else None,
                                        label=t("data.saved_mix"), info=t("data.saved_mix_info"), scale=3,
                                        elem_id="data-saved-mix")
                    saved_open = gr.Button(t("data.open_mix"), scale=1, elem_id="data-open-mix")
                sources_table = gr.Dataframe(headers=[t(f"data.scol.{c}") for c in SOURCE_COLUMNS],
                                             value=[], interactive=False, wrap=True, elem_id="data-sources",
                                             column_widths=SOURCE_COLUMN_WIDTHS, elem_classes=["qt-table"])
                with gr.Row():
                    pick = gr.Dropdown(choices=[], label=t("data.pick"), scale=3, elem_id="data-pick")
                    edit_btn = gr.Button(t("data.edit"), size="sm", scale=1, elem_id="data-edit")
                    remove_btn = gr.Button(t("data.remove"), size="sm", scale=1, variant="stop",
                                           elem_id="data-remove")
                with gr.Accordion(t("data.add_title"), open=True):
                    kind = gr.Radio(choices=[(t("data.kind.sample"), "sample"), (t("data.kind.file"), "file"),
                                             (t("data.kind.hub"), "hub")], value="sample", label=t("data.kind"),
                                    elem_id="data-kind")
                    with gr.Group(visible=True) as sample_box:
                        sample = gr.Dropdown(choices=samples, value=samples[0] if samples else None,
                                             label=t("data.sample"), elem_id="data-sample")
                    with gr.Group(visible=False) as file_box:
                        upload = gr.File(label=t("data.upload"), file_types=[".jsonl", ".json", ".csv", ".parquet"],
                                         elem_id="data-upload")
                        path = gr.Textbox(label=t("data.path"), placeholder="data/train.jsonl",
                                          info=_help(ctx, sinfo["path"]), elem_id="data-path")
                    with gr.Group(visible=False) as hub_box:
                        hub_id = gr.Textbox(label=t("data.hub_id"), placeholder="mlabonne/FineTome-100k",
                                            elem_id="data-hub-id")
                        with gr.Row():
                            hub = gr.Radio(choices=[("Hugging Face", "hf"), ("ModelScope", "modelscope")], value="hf",
                                           label=_label(ctx, "hub"), elem_id="data-hub")
                            split = gr.Textbox(value="train", label=_label(ctx, "split"),
                                               info=_help(ctx, sinfo["split"]), elem_id="data-split")
                        with gr.Row():
                            subset = gr.Textbox(label=_label(ctx, "subset"), info=_help(ctx, sinfo["subset"]),
                                                elem_id="data-subset")
                            limit = num("limit", sinfo["limit"], precision=0)
                    name = gr.Textbox(label=_label(ctx, "name"), info=_help(ctx, sinfo["name"]), elem_id="data-name")
                    with gr.Row():
                        fmt = gr.Dropdown(choices=list(FORMATS), value="auto", label=_label(ctx, "format"),
                                          info=_help(ctx, sinfo["format"]), elem_id="data-format")
                        share_mode = gr.Radio(choices=[(t("data.by_ratio"), "ratio"), (t("data.by_count"), "count"),
                                                       (t("data.by_all"), "all")], value="ratio",
                                              label=t("data.share_mode"), elem_id="data-share-mode")
                        share = gr.Number(value=1, minimum=0, label=t("data.share"), elem_id="data-share")
                    with gr.Accordion(t("data.more"), open=False):
                        columns = gr.Textbox(label=_label(ctx, "columns"), info=_help(ctx, sinfo["columns"]),
                                             lines=3, placeholder="instruction: question\noutput: answer",
                                             elem_id="data-columns")
                        instruction_in = gr.Radio(choices=list(sinfo["instruction_in"].choices), value="user",
                                                  label=_label(ctx, "instruction_in"),
                                                  info=_help(ctx, sinfo["instruction_in"]),
                                                  elem_id="data-instruction-in")
                        system_prompt = gr.Textbox(label=_label(ctx, "system_prompt"),
                                                   info=_help(ctx, sinfo["system_prompt"]),
                                                   elem_id="data-system-prompt")
                        with gr.Row():
                            min_tokens = num("min_tokens", sinfo["min_tokens"], precision=0)
                            max_tokens = num("max_tokens", sinfo["max_tokens"], precision=0)
                    with gr.Row():
                        add_btn = gr.Button(t("data.add"), variant="primary", elem_id="data-add")
                        update_btn = gr.Button(t("data.update"), elem_id="data-update")
                    form_status = gr.Markdown(elem_id="data-form-status")
            # ----------------------------------------------------------------- mix
            with gr.Column(scale=8):
                gr.Markdown(f"### {t('data.mix')}")
                with gr.Row():
                    seed = num("seed", minfo["seed"], precision=0)
                    max_seq_len = num("max_seq_len", minfo["max_seq_len"], precision=0)
                    total = num("total", minfo["total"], precision=0)
                with gr.Row():
                    overlong = gr.Radio(choices=list(minfo["overlong"].choices), value=minfo["overlong"].default,
                                        label=_label(ctx, "overlong"), info=_help(ctx, minfo["overlong"]),
                                        elem_id="data-overlong")
                    eval_fraction = gr.Slider(value=minfo["eval_fraction"].default, minimum=0,
                                              maximum=minfo["eval_fraction"].maximum, step=0.01,
                                              label=_label(ctx, "eval_fraction"),
                                              info=_help(ctx, minfo["eval_fraction"]), elem_id="data-eval-fraction")
                with gr.Row():
                    upsample = gr.Checkbox(value=minfo["upsample"].default, label=_label(ctx, "upsample"),
                                           info=_help(ctx, minfo["upsample"]), elem_id="data-upsample")
                    shuffle = gr.Checkbox(value=minfo["shuffle"].default, label=_label(ctx, "shuffle"),
                                          info=_help(ctx, minfo["shuffle"]), elem_id="data-shuffle")
                    dedupe = gr.Checkbox(value=minfo["dedupe"].default, label=_label(ctx, "dedupe"),
                                         info=_help(ctx, minfo["dedupe"]), elem_id="data-dedupe")
                mix_kind = gr.Radio(choices=[(t(f"data.mix_kind.{k}"), k) for k in minfo["kind"].choices],
                                    value=minfo["kind"].default, label=_label(ctx, "kind"),
                                    info=_help(ctx, minfo["kind"]), elem_id="data-mix-kind")
                reasoning_turns = gr.Radio(choices=list(minfo["reasoning_turns"].choices),
                                           value=minfo["reasoning_turns"].default, label=_label(ctx, "reasoning_turns"),
                                           info=_help(ctx, minfo["reasoning_turns"]), elem_id="data-reasoning-turns")
                with gr.Row():
                    tokenizer = gr.Textbox(value=tokenizer_for_choice(ctx, "demo" if ctx.demo else ""),
                                           label=_label(ctx, "tokenizer"), info=_help(ctx, minfo["tokenizer"]),
                                           elem_id="data-tokenizer")
                build_btn = gr.Button(t("data.build"), variant="primary", elem_id="data-build")
                status = gr.Markdown(t("data.start"), elem_id="data-status")
                counts = gr.Dataframe(headers=[t(f"data.col.{c}") for c in COLUMNS], value=[], interactive=False,
                                      column_widths=COLUMN_WIDTHS,
                                      wrap=True, elem_id="data-counts", elem_classes=["qt-table"])
                warning = gr.Markdown(elem_id="data-warning")
                drops = gr.Markdown(elem_id="data-drops")
                hist = gr.Plot(label=t("data.hist"), elem_id="data-hist")
                gr.Markdown(f"### {t('data.preview')}")
                with gr.Row():
                    preview_source = gr.Dropdown(choices=[(t("data.all_sources"), "*")], value="*",
                                                 label=t("data.preview_source"), elem_id="data-preview-source")
                    preview_index = gr.Number(value=1, minimum=1, precision=0, label=t("data.preview_index"),
                                              elem_id="data-preview-index")
                    prev_btn = gr.Button("◀", size="sm", min_width=40, elem_id="data-preview-prev")
                    next_btn = gr.Button("▶", size="sm", min_width=40, elem_id="data-preview-next")
                with gr.Row():
                    mask_assistant = gr.Checkbox(value=True, label=t("data.mask_assistant"),
                                                 info=t("data.mask_assistant_help"), elem_id="data-mask-assistant")
                    mask_think = gr.Checkbox(value=True, label=t("data.mask_think"), info=t("data.mask_think_help"),
                                             elem_id="data-mask-think")
                preview = gr.HTML(elem_id="data-preview")
                gr.Markdown(f"### {t('data.save')}")
                with gr.Row():
                    save_name = gr.Textbox(label=t("data.save_name"), placeholder="reasoning75_chat25",
                                           scale=3, elem_id="data-save-name")
                    overwrite = gr.Checkbox(value=False, label=t("data.overwrite"), scale=1, elem_id="data-overwrite")
                    save_btn = gr.Button(t("data.save_button"), variant="primary", scale=1, elem_id="data-save")
                save_status = gr.Markdown(elem_id="data-save-status")
                with gr.Accordion(t("data.yaml"), open=False):
                    yaml_view = gr.Code(language="yaml", interactive=False, elem_id="data-yaml")

    settings_inputs = [seed, max_seq_len, overlong, upsample, total, eval_fraction, shuffle, reasoning_turns, dedupe,
                       mix_kind]
    form_inputs = [kind, sample, path, hub_id, hub, split, subset, limit, name, fmt, share_mode, share, columns,
                   instruction_in, system_prompt, min_tokens, max_tokens]
    mix_outputs = [status, counts, warning, drops, hist, result_state, cache_state, preview_source, yaml_view]
    preview_inputs = [result_state, tokenizer, preview_source, preview_index, mask_assistant, mask_think]
    rebuild_inputs = [sources_state, cache_state, tokenizer, *settings_inputs]
    list_outputs = [sources_state, sources_table, pick, form_status]

    # ------------------------------------------------------------------------------ wiring
    # Every re-mix (after an edit, or the Build button) shares one queue slot: run side by side, a
    # slower mix of older sources (the preset's, still tokenizing) could finish last and leave its
    # counts on screen. One at a time, in the order asked, the newest sources' mix lands last.
    remix = {"concurrency_id": "data-remix", "concurrency_limit": 1}

    def chain(event):
        """After the sources or settings change: re-mix, then refresh the preview."""
        return (event.then(bind(rebuild, ctx), inputs=rebuild_inputs, outputs=mix_outputs, trigger_mode="always_last",
                           **remix)
                .then(bind(show_preview, ctx), inputs=preview_inputs, outputs=[preview, preview_index]))

    kind.change(bind(kind_visibility, ctx), inputs=kind, outputs=[sample_box, file_box, hub_box])
    upload.upload(bind(on_upload, ctx), inputs=[upload, name], outputs=[path, name, form_status])
    chain(add_btn.click(bind(add_source, ctx), inputs=[sources_state, *form_inputs], outputs=list_outputs))
    chain(update_btn.click(bind(update_source, ctx), inputs=[sources_state, pick, *form_inputs], outputs=list_outputs))
    chain(remove_btn.click(bind(remove_source, ctx), inputs=[sources_state, pick], outputs=list_outputs))
    edit_btn.click(bind(edit_source, ctx), inputs=[sources_state, pick],
                   outputs=[*form_inputs, sample_box, file_box, hub_box, form_status])
    chain(preset_load.click(bind(load_preset, ctx), inputs=[preset],
                            outputs=[sources_state, sources_table, pick, *settings_inputs, form_status]))
    (build_btn.click(bind(rebuild, ctx), inputs=rebuild_inputs, outputs=mix_outputs, **remix)
     .then(bind(show_preview, ctx), inputs=preview_inputs, outputs=[preview, preview_index]))
    for widget in (overlong, upsample, shuffle, reasoning_turns, dedupe, mix_kind):
        chain(widget.input(bind(no_op, ctx), inputs=None, outputs=None))
    for widget in (seed, max_seq_len, total):
        chain(widget.submit(bind(no_op, ctx), inputs=None, outputs=None))
        chain(widget.blur(bind(no_op, ctx), inputs=None, outputs=None))
    chain(eval_fraction.release(bind(no_op, ctx), inputs=None, outputs=None))
    for widget in (preview_source, mask_assistant, mask_think):
        widget.input(bind(show_preview, ctx), inputs=preview_inputs, outputs=[preview, preview_index])
    preview_index.submit(bind(show_preview, ctx), inputs=preview_inputs, outputs=[preview, preview_index])
    prev_btn.click(bind(preview_prev, ctx), inputs=preview_inputs, outputs=[preview, preview_index])
    next_btn.click(bind(preview_next, ctx), inputs=preview_inputs, outputs=[preview, preview_index])
    chain(saved_open.click(bind(open_mix, ctx), inputs=[saved],
                           outputs=[sources_state, sources_table, pick, *settings_inputs, save_name, form_status]))
    # Restore when the tab is first opened: Gradio reads a tab's BrowserState only once it is shown.
    tab.select(bind(restore_sources, ctx), inputs=[sources_state, restored],
               outputs=[sources_state, sources_table, pick, form_status, restored])
    tab.select(bind(refresh_saved, ctx), inputs=saved, outputs=saved)
    save_btn.click(bind(save, ctx),
                   inputs=[sources_state, cache_state, tokenizer, save_name, overwrite, *settings_inputs],
                   outputs=[save_status, cache_state]).then(bind(refresh_saved, ctx), inputs=saved, outputs=saved)
    ctx.shared["data.tab"] = tab

    def follow_the_model():
        # The Train tab is built after this one: its model box exists once every tab is built.
        model = (ctx.shared.get("train.fields") or {}).get("model.name_or_path")
        if model is not None:
            tokenizer.value = tokenizer_for_choice(ctx, model.value)
            model.change(bind(tokenizer_for_choice, ctx), inputs=model, outputs=tokenizer)

    ctx.after_build.append(follow_the_model)
