"""Emulated smaller cards: the Hardware tab's recommendation trains on each without running out.

    python bench/fit_cards.py --caps 12,16,24,48

For each card size the process is capped with torch.cuda.set_per_process_memory_fraction (through
QWENTUNE_GPU_MEMORY_GIB, which `python -m core train` honours: core.train.autobatch), and the
configuration core.hardware.recommend picks for that size (model, method, its sequence length) is
trained with train.micro_batch auto (grad_accum 4: 8 rows per step) for --steps steps through
`python -m core train`, on rows of exactly that length (the worst case for memory). Recorded per
card, in <out>/fit_cards.jsonl as soon as it is measured: the pick, the micro-batch auto chose and
why, the state (done / failed, out of memory or not), the peaks (allocated, reserved by the
allocator, NVML) and whether the reserved peak plus the CUDA context stayed under the cap.

Checkpoints have the pick's real shape with zero weights in a sparse file (bench/vram_sweep.py's
build_shape: no disk used, even for Qwen3-32B; memory does not depend on the values). A MoE pick,
which that builder cannot make, is replaced by the next recommendation that fits, and the row says so.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for p in (ROOT, ROOT / "bench"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from train_grid import build_uniform  # noqa: E402
from train_speed import log  # noqa: E402
from vram_sweep import SMOKE_MODEL, build_shape, smoke_point  # noqa: E402

from core.choices import BACKENDS  # noqa: E402


def pick_for(cap: float, seq: int) -> tuple[object, str]:
    """The recommendation for a card of ``cap`` GiB that this script can build (dense shapes), and a
    note when it is not the tab's first pick."""
    from core.hardware.catalog import load_catalog
    from core.hardware.recommend import best_pick, recommend_for_vram

    entries = load_catalog()
    recs = recommend_for_vram(cap, seq_len=seq, catalog=entries)
    best = best_pick(recs)
    if best is None:
        raise SystemExit(f"nothing fits a {cap:g} GiB card at {seq} tokens")
    for r in [best] + [r for r in recs if r.verdict == "fits" and r is not best]:
        if entries[r.model].arch.is_moe:
            continue
        note = "" if r is best else (f"the tab's pick is {best.model} {best.method}, a MoE shape this script "
                                     "cannot build; the next fitting pick instead")
        return r, note
    raise SystemExit(f"no dense recommendation for {cap:g} GiB")


def run_card(args, cap: float) -> dict:
    import yaml
    from transformers import AutoTokenizer

    from core.hardware.catalog import load_catalog

    work = Path(args.work)
    rec, note = pick_for(cap, args.seq)
    arch = load_catalog()[rec.model].arch
    if args.stand_in:  # CPU smoke tests: the demo model's shape stands in for the pick
        _point, arch = smoke_point()
        note = (note + "; " if note else "") + "stand-in: the demo model's shape"
    model_dir = build_shape(rec.model if not args.stand_in else SMOKE_MODEL, work, arch)
    seq = rec.seq_len
    mix = work / f"cards-mix-{seq}"
    build_uniform(mix, AutoTokenizer.from_pretrained(model_dir), seq, args.steps * 8 + 8, seed=seq)
    name = f"card-{cap:g}gb-{rec.model}-{rec.method}"
    runs_dir = work / "card-runs"
    import shutil

    shutil.rmtree(runs_dir / name, ignore_errors=True)
    cfg = {"model": {"name_or_path": str(model_dir), "method": rec.method,
                     "quant": "nf4" if rec.method == "qlora" else "auto", "backend": args.backend},
           "lora": {"r": 16, "alpha": 16},
           "train": {"max_steps": args.steps, "micro_batch": "auto", "grad_accum": 4, "max_seq_len": seq,
                     "save_steps": 100000, "eval_steps": 0},
           "data": {"mix_dir": str(mix)}, "runs_dir": str(runs_dir)}
    cfg_path = work / f"{name}.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    env = dict(os.environ)
    if not args.no_cap:
        env["QWENTUNE_GPU_MEMORY_GIB"] = f"{cap:g}"
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "core", "train", str(cfg_path), "--name", name], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=args.run_timeout)
    status = json.loads((runs_dir / name / "status.json").read_text())
    reserved = status.get("peak_reserved_gib")
    from core.hardware.estimate import load_coefficients

    context = load_coefficients().get("cuda_context_gib")
    row = {"cap_gib": cap, "model": rec.model, "method": rec.method, "seq_len": seq, "substitute": note or None,
           "tab_est_gib": rec.est_gib, "state": status.get("state"), "oom": bool(status.get("oom")),
           "error": status.get("error"), "rc": proc.returncode, "steps": status.get("step"),
           "micro_batch": status.get("micro_batch"), "grad_accum": status.get("grad_accum"),
           "micro_batch_reason": status.get("micro_batch_reason"),
           "micro_batch_est_gib": status.get("micro_batch_est_gib"),
           "peak_alloc_gib": status.get("peak_alloc_gib"), "peak_reserved_gib": reserved,
           "nvml_used_gib": status.get("nvml_used_gib"), "nvml_process_gib": status.get("nvml_process_gib"),
           "tokens_per_s": status.get("tokens_per_s"),
           "wall_s": round(time.time() - t0, 1), "device": status.get("gpu_name") or "cpu",
           "backend": status.get("backend"), "date": time.strftime("%Y-%m-%d %H:%M"), "call": args.call}
    row["under_cap"], row["under_cap_by"] = under_cap(row, cap, context)
    if proc.returncode != 0:
        row["log_tail"] = (proc.stdout + proc.stderr)[-1500:]
    return row


def under_cap(row: dict, cap: float, context: float) -> tuple[bool | None, str | None]:
    """Whether the run's measured footprint stayed within the emulated card, and by which figure:
    NVML's count for the process where the driver gives one (the card's real use by it), else the
    card-wide NVML reading (which adds whatever else the card holds, so it can only over-count), else
    the reserved peak plus the fitted CUDA context (an estimate where no NVML reading exists)."""
    for key in ("nvml_process_gib", "nvml_used_gib"):
        if row.get(key):
            return row[key] <= cap, key
    if row.get("peak_reserved_gib") is not None:
        return row["peak_reserved_gib"] + context <= cap, "peak_reserved_gib + cuda_context_gib"
    return None, None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--caps", default="12,16,24,48", help="Card sizes to emulate, GiB.")
    p.add_argument("--seq", type=int, default=2048, help="Sequence length the tab recommends for.")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--backend", default="unsloth", choices=BACKENDS)
    p.add_argument("--work", default="/tmp/qwentune-bench")
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    p.add_argument("--call", default="")
    p.add_argument("--run-timeout", type=int, default=420)
    p.add_argument("--stand-in", action="store_true",
                   help="Train the demo model's shape instead of the pick's (CPU smoke tests).")
    p.add_argument("--no-cap", action="store_true", help="Do not cap the process (CPU smoke tests).")
    args = p.parse_args(argv)
    args.call = args.call or time.strftime("%Y%m%d-%H%M%S")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    Path(args.work).mkdir(parents=True, exist_ok=True)
    rows = []
    for cap in [float(c) for c in args.caps.split(",") if c]:
        try:
            row = run_card(args, cap)
        except subprocess.TimeoutExpired:
            row = {"cap_gib": cap, "state": "timeout", "call": args.call}
        rows.append(row)
        with (out / "fit_cards.jsonl").open("a") as f:
            f.write(json.dumps(row) + "\n")
        log(f"{cap:g} GiB: {row.get('model')} {row.get('method')} micro-batch {row.get('micro_batch')} x "
            f"{row.get('grad_accum')}: {row.get('state')}, reserved peak {row.get('peak_reserved_gib')} GiB"
            + (f" ({row['substitute']})" if row.get("substitute") else ""))
    print("\n| card | pick | micro-batch | state | peak alloc / reserved / NVML GiB | under cap |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['cap_gib']:g} GB | {r.get('model')} {r.get('method')} | {r.get('micro_batch')} x "
              f"{r.get('grad_accum')} | {r.get('state')}{' (OOM)' if r.get('oom') else ''} | "
              f"{r.get('peak_alloc_gib')} / {r.get('peak_reserved_gib')} / {r.get('nvml_used_gib')} | "
              f"{r.get('under_cap')} |")
    ok = all(r.get("state") == "done" and r.get("under_cap") is not False for r in rows)
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
