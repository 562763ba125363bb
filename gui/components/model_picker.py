"""The model picker: choose a local model or a catalog model, download it with a progress bar.

Layout and wiring only; resolving, checking and downloading live in ``core.models``. Building it
touches no network and validates nothing heavy: the list comes from a quick folder scan, and the
download runs in a subprocess (``core.models.jobs.DownloadJob``) that the page polls.

Use (e.g. in the Train tab)::

    picker = model_picker.build(ctx, method=method_radio)   # or build(ctx): it adds its own radio
    picker["choice"]        # gr.Dropdown, value = ModelConfig.name_or_path
    picker["hub"], picker["quant"], picker["method"]
    picker["local_path"]    # gr.State: the local folder of the choice, "" while not on disk
    picker["is_downloaded"](name_or_path, hub, method, quant) -> bool   (no network)

The dict is also kept in ``ctx.shared["model_picker"]``. Downloads this server started are kept in
``ctx.server["model_picker.jobs"]``; every download also has a record and a log on disk
(``core.models.jobs.DownloadJob``), so a page built after a server restart shows a download an
earlier server started, with its progress, and its Cancel stops it.
"""

from __future__ import annotations

import html
import threading
import time

POLL_SECONDS = 0.5
# How often a page follows a download it did not start itself (found running as the page loaded).
FOLLOW_SECONDS = 1.0
# Translated first lines for the errors users meet most; the detail (from core) follows in English.
ERROR_HEADLINES = {"HubUnreachable": "models.error_unreachable", "NotEnoughDisk": "models.error_disk",
                   "RepoNotFound": "models.error_not_found", "RepoGated": "models.error_gated",
                   "MissingPackage": "models.error_package"}
SHARED_KEY = "model_picker"
JOBS_KEY = "model_picker.jobs"
JOBS_LOCK_KEY = "model_picker.jobs_lock"


def _fields() -> dict:
    from core.config import ModelConfig
    from core.settings import field_info

    return {f.name: f for f in field_info(ModelConfig)}


def _help(ctx, name: str, fields: dict) -> str:
    """The setting's own help text (core.config); a translation where the page is not English."""
    return ctx.t.setting_help("models", fields[name])


def _size(n: int) -> str:
    from core.models.download import fmt_bytes

    return fmt_bytes(n) if n else "?"


def choices(ctx, *, check: bool = False) -> list[tuple[str, str]]:
    """(label, value) pairs: demo, local folders, then catalog keys. ``check`` validates folders."""
    from core.models.local import list_local_models, status_text
    from core.models.resolve import catalog
    from core.settings import ConfigError

    t = ctx.t
    out: list[tuple[str, str]] = [(t("models.choice_demo"), "demo")]
    for m in list_local_models(check=check, include_demo=False):
        bad = check and not m.ok
        parts = [m.label]
        if m.size_bytes:
            parts.append(_size(m.size_bytes))
        if m.check is not None and m.check.quantized_4bit:
            parts.append("4-bit")
        if not m.complete:
            parts.append(t("models.tag_incomplete"))
        elif bad:
            parts.append(status_text(m))
        out.append((("⚠ " if bad or not m.complete else "▸ ") + " · ".join(parts), m.name))
    try:
        entries = catalog()
    except ConfigError:
        entries = {}  # a broken catalog file is reported in the status line, not here
    for key, entry in entries.items():
        moe = " · MoE" if entry.is_moe and "moe" not in entry.display.lower() else ""
        out.append((f"⬇ {entry.display} ({key}) · {entry.params_b:g}B{moe}", key))
    return out


def is_downloaded(name_or_path: str, hub: str = "hf", method: str = "qlora", quant: str = "auto") -> bool:
    """Whether the choice is on disk already (demo: whether it is built). No network."""
    from core.models import ModelError, local_path_for

    try:
        return local_path_for(name_or_path, method=method, quant=quant, hub=hub) is not None
    except ModelError:
        return False


def describe(ctx, name_or_path: str, hub: str, method: str, quant: str) -> tuple[str, str]:
    """(markdown status, local path or "") for the current choice. No network, no building."""
    from core.models import ModelError, parse_ref
    from core.models.hubs import HUB_NAMES
    from core.models.local import check_model_dir
    from core.models.resolve import find_local

    t = ctx.t
    try:
        ref = parse_ref(name_or_path, method=method, quant=quant, hub=hub)
    except ModelError as exc:
        return f"✖ {html.escape(exc.reason)}" + (f"<br>{html.escape(exc.advice)}" if exc.advice else ""), ""
    if ref.kind == "demo":
        found = find_local(ref)
        return t("models.status_demo"), str(found) if found else ""
    if ref.kind == "folder":
        check = check_model_dir(ref.text)
        if not check.ok:
            items = "".join(f"<li>{html.escape(p)}</li>" for p in check.problems)
            return f"✖ {t('models.status_broken', path=html.escape(ref.text))}<ul>{items}</ul>", ""
        return "✔ " + t("models.status_folder", path=html.escape(ref.text), arch=html.escape(_arch(check))), ref.text
    found = find_local(ref)
    target = f"`{ref.repo_id}` ({HUB_NAMES[ref.hub]})"
    if found is not None:
        return "✔ " + t("models.status_downloaded", target=target, path=html.escape(str(found))), str(found)
    return "⬇ " + t("models.status_not_downloaded", target=target), ""


def _arch(check) -> str:
    parts = [check.model_type]
    if check.params:
        parts.append(f"{check.params / 1e9:.2f}B" if check.params >= 1e8 else f"{check.params / 1e6:.1f}M")
    if check.layers:
        parts.append(f"{check.layers} layers")
    if check.experts:
        parts.append(f"{check.experts} experts")
    if check.quantized_4bit:
        parts.append(check.quant_method)
    return " · ".join(p for p in parts if p)


def progress_html(ctx, p) -> str:
    """A progress bar with bytes, speed and ETA (or the error and what to do)."""
    from core.models.download import fmt_bytes, fmt_duration

    t = ctx.t
    pct = 100.0 * p.fraction
    color = {"failed": "#dc2626", "cancelled": "#64748b", "done": "#16a34a"}.get(p.state, "#2563eb")
    if p.state == "downloading":
        detail = t("models.progress_line", done=fmt_bytes(p.done_bytes), total=fmt_bytes(p.total_bytes),
                   speed=fmt_bytes(p.speed_bps) + "/s", eta=fmt_duration(p.eta_s))
    elif p.state == "done":
        detail = t("models.progress_done", total=fmt_bytes(p.total_bytes), path=p.path)
    elif p.state == "failed":
        headline = ERROR_HEADLINES.get(p.error_kind)
        detail = (t(headline) + "\n" if headline and ctx.lang != "en" else "")
        detail += t("models.progress_failed", error=p.error) + (f"\n{p.advice}" if p.advice else "")
    elif p.state == "cancelled":
        detail = t("models.progress_cancelled")
    else:
        detail = t("models.progress_checking")
    detail_html = html.escape(detail).replace("\n", "<br>")
    return (f'<div class="qt-download" data-state="{p.state}" style="padding:8px 0">'
            f'<div style="display:flex;justify-content:space-between"><b>{html.escape(p.repo_id)}</b>'
            f'<span>{pct:.1f}%</span></div>'
            f'<div style="height:10px;background:#e5e7eb;border-radius:5px;margin:6px 0">'
            f'<div class="qt-download-bar" style="width:{pct:.1f}%;height:10px;background:{color};'
            f'border-radius:5px"></div></div><small>{detail_html}</small></div>')


def _jobs(ctx):
    jobs = ctx.server.setdefault(JOBS_KEY, {})
    # The pages of both languages may click Download at once: one download per repo.
    return jobs, ctx.server.setdefault(JOBS_LOCK_KEY, threading.Lock())


def job_for(ctx, name: str, hub: str, method: str, quant: str):
    """The download of this choice: the one this server holds, else one found on disk (started by an
    earlier server), else None. Demo and folder choices have none."""
    from core.models import ModelError, parse_ref
    from core.models.jobs import DownloadJob

    try:
        ref = parse_ref(name or "", method=method, quant=quant, hub=hub)
    except ModelError:
        return None
    if ref.kind not in ("catalog", "repo"):
        return None
    jobs, lock = _jobs(ctx)
    key = (hub, ref.repo_id)
    with lock:
        job = jobs.get(key)
        if job is None:
            job = DownloadJob.find(name, hub=hub, method=method, quant=quant)
            if job is not None:
                jobs[key] = job
    return job


def start_download(ctx, name: str, hub: str, method: str, quant: str):
    """Start the choice's download, or return the one already running (from this or an earlier server)."""
    from core.models import parse_ref
    from core.models.jobs import DownloadJob

    ref = parse_ref(name or "", method=method, quant=quant, hub=hub)
    jobs, lock = _jobs(ctx)
    key = (hub, ref.repo_id)
    with lock:
        job = jobs.get(key)
        if job is None or not job.running:
            job = DownloadJob(name, hub=hub, method=method, quant=quant).start()  # attaches if running
            jobs[key] = job
    return job


def shown_download(ctx, name: str, hub: str, method: str, quant: str):
    """The running download a page shows as it loads: the choice's own, else any running one."""
    from core.models.jobs import running_downloads

    job = job_for(ctx, name, hub, method, quant)
    if job is not None and job.running:
        return job
    running = running_downloads()
    return running[0] if running else None


def follow(ctx, record: str) -> tuple[str, bool]:
    """(progress bar, still running) of the download whose record is at ``record``."""
    from core.models.jobs import DownloadJob

    job = DownloadJob.from_record(record) if record else None
    if job is None:
        return "", False
    report = job.progress
    return progress_html(ctx, report), not report.finished


def cancel_download(ctx, name: str, hub: str, method: str, quant: str, record: str = "") -> bool:
    """Cancel the choice's running download, else the one shown (``record``). False if none runs."""
    from core.models.jobs import DownloadJob

    job = job_for(ctx, name, hub, method, quant)
    if (job is None or not job.running) and record:
        job = DownloadJob.from_record(record)
    if job is None or not job.running:
        return False
    job.cancel()
    return True


def default_method(ctx, fields: dict | None = None) -> str:
    """LoRA in demo mode (the CPU: QLoRA's 4-bit weights need CUDA), else the setting's default (qlora)."""
    if ctx.demo:
        return "lora"
    return (fields or _fields())["method"].default


def _default_choice(ctx, fields: dict) -> str:
    if ctx.demo:
        return "demo"
    from core.models.local import list_local_models

    for m in list_local_models(check=False, include_demo=False):
        if m.complete and m.source == "download":
            return m.name
    return fields["name_or_path"].default


def build(ctx, method=None) -> dict:
    """Render the picker where it is called; return its components (see the module docstring)."""
    import gradio as gr

    from core.models import ModelError, parse_ref

    t = ctx.t
    fields = _fields()
    _jobs(ctx)  # once per server process, shared by the pages of both languages
    default = _default_choice(ctx, fields)
    with gr.Group(elem_id="model-picker"):
        # The model's own row: its labels ("⬇ Qwen3-30B-A3B (qwen3-30b-a3b) · 30.5B · MoE") need the
        # width; hub, quantization and method share the row below, wide enough for their labels.
        choice = gr.Dropdown(choices=choices(ctx), value=default, allow_custom_value=True,
                             label=t("models.choice"), info=_help(ctx, "name_or_path", fields),
                             elem_id="model-choice")
        with gr.Row(equal_height=True):
            hub = gr.Radio([(t("models.hub_hf"), "hf"), (t("models.hub_modelscope"), "modelscope")],
                           value=fields["hub"].default, label=t("models.hub"), info=_help(ctx, "hub", fields),
                           scale=1, elem_id="model-hub")
            quant = gr.Dropdown([(t(f"models.quant_{q}"), q) for q in fields["quant"].choices],
                                value=fields["quant"].default, label=t("models.quant"),
                                info=_help(ctx, "quant", fields), scale=2, min_width=300, elem_id="model-quant")
            own_method = method is None
            if own_method:
                method = gr.Radio([(t(f"models.method_{m}"), m) for m in fields["method"].choices],
                                  value=default_method(ctx, fields), label=t("models.method"),
                                  info=_help(ctx, "method", fields), scale=1, elem_id="model-method")
        status = gr.Markdown(elem_id="model-status")
        progress = gr.HTML(elem_id="model-download-progress")
        with gr.Row():
            download = gr.Button(t("models.download"), variant="primary", size="sm", elem_id="model-download")
            cancel = gr.Button(t("models.cancel"), size="sm", elem_id="model-cancel")
            refresh = gr.Button(t("models.refresh"), size="sm", elem_id="model-refresh")
        local_path = gr.State("")
        shown = gr.State("")  # the record of the download the progress bar shows
        follower = gr.Timer(FOLLOW_SECONDS, active=False)

    selection = [choice, hub, method, quant]

    def on_change(name, hub_v, method_v, quant_v):
        text, path = describe(ctx, name or "", hub_v, method_v, quant_v)
        job = job_for(ctx, name, hub_v, method_v, quant_v)
        if job is not None and job.running:  # e.g. started on the other language's page
            text += "<br>⬇ " + t("models.download_running")
        return text, path

    def on_refresh(name, hub_v, method_v, quant_v):
        text, path = describe(ctx, name or "", hub_v, method_v, quant_v)
        return gr.update(choices=choices(ctx, check=True)), text, path

    def on_download(name, hub_v, method_v, quant_v):
        try:
            ref = parse_ref(name or "", method=method_v, quant=quant_v, hub=hub_v)
        except ModelError as exc:
            yield gr.skip(), f"✖ {html.escape(str(exc))}", "", gr.skip(), gr.skip(), gr.skip()
            return
        if ref.kind in ("demo", "folder"):
            text, path = describe(ctx, name, hub_v, method_v, quant_v)
            yield gr.skip(), t("models.nothing_to_download") + "<br>" + text, "", path, gr.skip(), gr.skip()
            return
        job = start_download(ctx, name, hub_v, method_v, quant_v)
        # This handler follows the download from here on; the load-time follower stops.
        follow_off = gr.Timer(active=False)
        while True:
            report = job.progress
            if report.finished:
                break
            yield gr.skip(), gr.skip(), progress_html(ctx, report), gr.skip(), str(job.record_path), follow_off
            time.sleep(POLL_SECONDS)
        text, path = describe(ctx, name, hub_v, method_v, quant_v)
        yield (gr.update(choices=choices(ctx, check=True), value=name), text, progress_html(ctx, report), path,
               str(job.record_path), follow_off)

    def on_cancel(name, hub_v, method_v, quant_v, record):
        if not cancel_download(ctx, name, hub_v, method_v, quant_v, record):
            return t("models.nothing_running")
        return gr.skip()

    def on_load(name, hub_v, method_v, quant_v):
        text, path = on_change(name, hub_v, method_v, quant_v)
        job = shown_download(ctx, name, hub_v, method_v, quant_v)
        if job is None:
            return text, path, gr.skip(), gr.skip(), gr.Timer(active=False), gr.Timer(active=False)
        return (text, path, progress_html(ctx, job.progress), str(job.record_path), gr.Timer(active=True),
                gr.Timer(active=False))

    def on_follow(record):
        bar, running = follow(ctx, record)
        if running:
            return bar, gr.skip(), gr.skip()
        return bar, gr.Timer(active=False), gr.update(choices=choices(ctx, check=True))

    for component in selection:
        component.change(on_change, selection, [status, local_path], show_progress="hidden")
    refresh.click(on_refresh, selection, [choice, status, local_path])
    download.click(on_download, selection, [choice, status, progress, local_path, shown, follower],
                   show_progress="hidden")
    cancel.click(on_cancel, [*selection, shown], [status], show_progress="hidden")
    # Fill the status once the page is there (describe() reads a few small files: not at build time),
    # and show a download that is running already (this page's choice first, else any), then follow it.
    status_loader = gr.Timer(0.2, active=True)
    status_loader.tick(on_load, selection, [status, local_path, progress, shown, follower, status_loader],
                       show_progress="hidden")
    follower.tick(on_follow, [shown], [progress, follower, choice], show_progress="hidden")

    parts = {"choice": choice, "hub": hub, "quant": quant, "method": method, "status": status,
             "progress": progress, "download": download, "cancel": cancel, "refresh": refresh,
             "local_path": local_path, "shown_download": shown, "is_downloaded": is_downloaded, "describe": describe}
    ctx.shared[SHARED_KEY] = parts
    return parts
