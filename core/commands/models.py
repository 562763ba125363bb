"""models: list local models, download one from Hugging Face or ModelScope, add a folder."""

from __future__ import annotations

import sys

HELP = "List local Qwen3 models, download one (Hugging Face or ModelScope), or add a model folder."


def _model_field(name: str):
    from core.config import ModelConfig
    from core.settings import field_info

    return next(f for f in field_info(ModelConfig) if f.name == name)


def add_arguments(p) -> None:
    from core.choices import DOWNLOAD_QUANTS
    from core.models.paths import MODELS_DIR_HELP

    sub = p.add_subparsers(dest="models_command", metavar="ACTION")
    sub.required = True

    ls = sub.add_parser("list", help="Every model folder on this machine, checked.",
                        description="Every model folder on this machine: the demo model, downloads, added "
                                    "folders and Qwen3 models in the Hugging Face / ModelScope caches, with "
                                    "size, 4-bit or not, architecture, and what is wrong with broken ones.")
    ls.add_argument("--cache-dir", help=MODELS_DIR_HELP)
    ls.add_argument("--json", action="store_true", help="Print one JSON document.")

    get = sub.add_parser("get", help="Download a model (resumes an interrupted download).",
                         description="Download a catalog model (e.g. qwen3-8b) or any hub repository "
                                     "(owner/name) into the models folder. Interrupted downloads resume.")
    get.add_argument("model", metavar="QWEN3_ID", help="Catalog key (e.g. qwen3-8b) or hub repository id.")
    hub, method, quant = _model_field("hub"), _model_field("method"), _model_field("quant")
    get.add_argument("--hub", choices=list(hub.choices), default=hub.default, help=hub.help)
    get.add_argument("--method", choices=list(method.choices), default=method.default, help=method.help)
    get.add_argument("--quant", choices=list(DOWNLOAD_QUANTS), default=quant.default,
                     help=quant.help + " 'none': the original 16-bit weights. 'auto': dynamic 4-bit for "
                                       "dense models, plain 4-bit for MoE models (with --method qlora).")
    get.add_argument("--cache-dir", help=MODELS_DIR_HELP)
    get.add_argument("--json", action="store_true", help="Print one JSON document at the end "
                                                         "(progress goes to stderr).")
    get.add_argument("--progress-json", action="store_true",
                     help="Print every progress report as a JSON line on stdout (used by the GUI).")

    dl = sub.add_parser("downloads", help="Downloads started in the background (by the GUI): state, progress.",
                        description="The background downloads found in <cache>/jobs: running ones (from "
                                    "this or an earlier web server) and finished ones, with progress and "
                                    "the last error. --cancel NAME stops the running download of NAME.")
    dl.add_argument("--cancel", metavar="QWEN3_ID", help="Stop the running download of this model "
                                                          "(partial files stay; downloading again resumes).")
    dl.add_argument("--hub", choices=list(hub.choices), default=hub.default, help=hub.help)
    dl.add_argument("--method", choices=list(method.choices), default=method.default, help=method.help)
    dl.add_argument("--quant", choices=list(DOWNLOAD_QUANTS), default=quant.default, help=quant.help)
    dl.add_argument("--json", action="store_true", help="Print one JSON document.")

    add = sub.add_parser("add", help="Add a model folder to the list (checked first).")
    add.add_argument("path", metavar="PATH", help="A Hugging Face format Qwen3 model folder.")
    add.add_argument("--force", action="store_true", help="Add it even when the check finds problems.")
    add.add_argument("--json", action="store_true", help="Print one JSON document.")

    rm = sub.add_parser("remove", help="Remove an added folder from the list (its files stay).")
    rm.add_argument("path", metavar="PATH")
    rm.add_argument("--json", action="store_true", help="Print one JSON document.")


def run(args) -> int:
    return {"list": _list, "get": _get, "downloads": _downloads, "add": _add,
            "remove": _remove}[args.models_command](args)


def _arch_text(check) -> str:
    if check is None or not check.model_type:
        return "-"
    moe = f", {check.experts} experts" if check.experts else ""
    return f"{check.model_type} {check.layers}L x {check.hidden}{moe}"


def _params_text(check) -> str:
    if check is None or not check.params:
        return "-"
    return f"{check.params / 1e9:.2f}B" if check.params >= 1e8 else f"{check.params / 1e6:.2f}M"


def _list(args) -> int:
    from core.cli import print_json
    from core.models.download import fmt_bytes
    from core.models.local import list_local_models, status_text
    from core.models.paths import models_dir

    models = list_local_models(cache_dir=args.cache_dir)
    if args.json:
        print_json({"models_dir": str(models_dir(args.cache_dir)),
                    "models": [dict(m.to_dict(), status=status_text(m)) for m in models]})
        return 0
    print(f"models folder: {models_dir(args.cache_dir)}")
    rows = [("NAME", "SIZE", "4-BIT", "ARCH", "PARAMS", "SOURCE", "STATUS")]
    for m in models:
        c = m.check
        rows.append((m.label if m.source != "demo" else "demo", fmt_bytes(m.size_bytes) if m.size_bytes else "-",
                     (c.quant_method or "yes") if c and c.quantized_4bit else "no" if c else "-",
                     _arch_text(c), _params_text(c), m.source,
                     "ok" if m.ok else "PROBLEM"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())
    for m in models:
        if m.source != "demo":
            print(f"  {m.label}: {m.path}")
        if not m.ok:
            for problem in (m.check.problems if m.check and m.check.problems else [status_text(m)]):
                print(f"      ! {problem}")
    return 0


def _get(args) -> int:
    import json
    import time

    from core.cli import print_json
    from core.models.download import DownloadProgress, fmt_bytes
    from core.models.errors import ModelError
    from core.models.hubs import HUB_NAMES, token_source
    from core.models.resolve import find_local, parse_ref, resolve_model

    last: list[DownloadProgress] = []

    def emit_json(p: DownloadProgress) -> None:
        last[:] = [p]
        sys.stdout.write(json.dumps(p.to_dict(), ensure_ascii=False) + "\n")
        sys.stdout.flush()

    def emit_line(p: DownloadProgress) -> None:
        if p.state == "failed":
            return  # the error is printed once, in full, below
        print(p.line(), file=sys.stderr if args.json else sys.stdout, flush=True)

    progress = emit_json if args.progress_json else emit_line
    started = time.monotonic()
    try:
        ref = parse_ref(args.model, method=args.method, quant=args.quant, hub=args.hub)
        already = find_local(ref, args.cache_dir)
        if ref.kind in ("catalog", "repo") and already is None:
            source = token_source(args.hub)
            note = f"using the token from {source}" if source else "no token (public repositories only)"
            print(f"{ref.repo_id} from {HUB_NAMES[args.hub]}; {note}", file=sys.stderr, flush=True)
            _refuse_if_running_elsewhere(ref.repo_id, args.hub, args.cache_dir)
        path = resolve_model(args.model, method=args.method, quant=args.quant, hub=args.hub,
                             cache_dir=args.cache_dir, download=True, progress=progress)
    except ModelError as exc:
        if args.progress_json:
            if not (last and last[0].state == "failed"):  # the download already reported it
                emit_json(DownloadProgress(repo_id=args.model, hub=args.hub, state="failed", error=exc.reason,
                                           advice=exc.advice, error_kind=type(exc).__name__))
        elif args.json:
            print_json({"ok": False, "model": args.model, "hub": args.hub, "error": exc.reason,
                        "advice": exc.advice})
        else:
            print(f"error: {exc}", file=sys.stderr)
        return 1
    from pathlib import Path

    from core.models.local import dir_size

    result = {"ok": True, "model": args.model, "kind": ref.kind, "repo_id": ref.repo_id, "hub": args.hub,
              "method": args.method, "quant": args.quant, "path": path,
              "downloaded": already is None and ref.kind in ("catalog", "repo"),
              "size_bytes": dir_size(Path(path)),
              "seconds": round(time.monotonic() - started, 2)}
    if args.progress_json:
        if not result["downloaded"]:
            emit_json(DownloadProgress(repo_id=ref.repo_id or args.model, hub=args.hub, state="done",
                                       path=path, total_bytes=result["size_bytes"],
                                       done_bytes=result["size_bytes"], message="already on disk"))
    elif args.json:
        print_json(result)
    else:
        verb = "downloaded" if result["downloaded"] else "already here"
        print(f"{verb}: {path} ({fmt_bytes(result['size_bytes'])})")
        print(f"use it with: model.name_or_path: {args.model}" + (f"  (hub: {args.hub})" if ref.repo_id else ""))
    return 0


def _refuse_if_running_elsewhere(repo_id: str, hub: str, cache_dir) -> None:
    """Two processes writing the same files would corrupt them: refuse while a background job (the
    GUI's) downloads this repository."""
    import os

    from core.models.errors import ModelError
    from core.models.jobs import job_record_path
    from core.procs import RECORD_ENV, JobRecord

    path = job_record_path(repo_id, hub, cache_dir)
    if os.environ.get(RECORD_ENV) == str(path):
        return  # this process is that job
    rec = JobRecord.read(path)
    if rec is None or not rec.running:
        return
    raise ModelError(f"{repo_id} is being downloaded already, in the background (process {rec.pid}, started "
                     f"{rec.started}; its log: {rec.log}).",
                     f"Wait for it (`python -m core models downloads` shows its progress), or stop it with "
                     f"`python -m core models downloads --cancel {repo_id} --hub {hub}` or Cancel download "
                     f"in the GUI; downloading again then resumes.")


def _downloads(args) -> int:
    from core.cli import print_json
    from core.models.download import fmt_bytes
    from core.models.jobs import DownloadJob
    from core.models.paths import jobs_dir

    if args.cancel:
        job = DownloadJob.find(args.cancel, hub=args.hub, method=args.method, quant=args.quant)
        if job is None or not job.running:
            print(f"error: no download of {args.cancel} from {args.hub} is running.", file=sys.stderr)
            return 1
        job.cancel()
        print(f"cancelled: {job.repo_id or job.name_or_path} (partial files stay; downloading again resumes)")
        return 0
    jobs = [job for path in sorted(jobs_dir().glob("download-*.json"))
            if (job := DownloadJob.from_record(path)) is not None]
    rows = []
    for job in jobs:
        p = job.progress
        rows.append({"model": job.name_or_path, "repo_id": job.repo_id, "hub": job.hub, "state": p.state,
                     "done_bytes": p.done_bytes, "total_bytes": p.total_bytes, "fraction": round(p.fraction, 4),
                     "pid": job.pid, "error": p.error, "advice": p.advice, "log": str(job.log_path)})
    if args.json:
        print_json({"jobs_dir": str(jobs_dir()), "downloads": rows})
        return 0
    if not rows:
        print(f"no background downloads in {jobs_dir()}")
        return 0
    for row in rows:
        size = f"{fmt_bytes(row['done_bytes'])} / {fmt_bytes(row['total_bytes'])}" if row["total_bytes"] else ""
        print(f"{row['state']:<11} [{row['hub']}] {row['repo_id'] or row['model']}  {size}"
              f"{'  ' + row['error'] if row['error'] else ''}")
    return 0


def _add(args) -> int:
    from core.cli import print_json
    from core.models.errors import ModelError
    from core.models.local import add_local_model, registry_path

    try:
        check = add_local_model(args.path, force=args.force)
    except ModelError as exc:
        if args.json:
            print_json({"ok": False, "path": args.path, "error": exc.reason,
                        "problems": getattr(exc, "problems", [])})
        else:
            print(f"error: {exc}", file=sys.stderr)
            if getattr(exc, "problems", None):
                print("Fix the folder, or add it anyway with --force.", file=sys.stderr)
        return 1
    if args.json:
        print_json({"ok": True, "path": check.path, "registry": str(registry_path()),
                    "problems": check.problems, "warnings": check.warnings})
        return 0
    print(f"added: {check.path}")
    for w in check.warnings:
        print(f"  note: {w}")
    for p in check.problems:
        print(f"  ! {p}")
    return 0


def _remove(args) -> int:
    from core.cli import print_json
    from core.models.local import remove_local_model

    removed = remove_local_model(args.path)
    if args.json:
        print_json({"ok": removed, "path": args.path})
    else:
        print(f"removed from the list: {args.path}" if removed else f"not in the list: {args.path}")
    return 0 if removed else 1
