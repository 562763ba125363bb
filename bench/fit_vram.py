"""Refit the VRAM estimator's coefficients to the GPU measurements and show the error per point.

    python bench/fit_vram.py                  # how the current coefficients do, and what a refit would do
    python bench/fit_vram.py --write          # store the refit in core/hardware/vram_coefficients.json
    python -m bench.fit_vram --points other.jsonl --card H100

Points marked ``held_out`` (bench/vram_sweep.py --wide marks about a third) are left out of the fit
and reported on their own: their error is the figure that says how good the estimator is. With few
points, ``--leave-one-out`` gives that figure for every point: each is predicted by a fit to all
the others (``--leave-one-out micro_batch>2`` only for points matching a filter).

Compared figure: the estimate's ``alloc_gib`` against ``peak_alloc_gib``
(torch.cuda.max_memory_allocated of the trainer). NVML's used memory is shown beside the estimate's
``total_gib`` (allocated + allocator slack + CUDA context) for information. Exit status 1 when a point is
more than --tolerance off after the fit.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEFAULT_POINTS = ROOT / "bench" / "results" / "vram.jsonl"


def table(rows: list[dict], title: str) -> str:
    lines = [title, f"  {'card':<22}{'model':<12}{'method':<7}{'backend':<8}{'seq':>6}{'mb':>3}"
                    f"{'measured':>10}{'estimate':>10}{'error':>8}{'nvml':>8}{'total':>8}"]
    for r in rows:
        nvml = f"{r['nvml_used_gib']:.2f}" if r["nvml_used_gib"] else "-"
        lines.append(f"  {str(r['card'])[:21]:<22}{r['model']:<12}{r['method']:<7}{r['backend']:<8}"
                     f"{r['seq_len']:>6}{r['micro_batch']:>3}{r['measured_gib']:>10.2f}{r['estimated_gib']:>10.2f}"
                     f"{r['error'] * 100:>7.1f}%{nvml:>8}{r['estimated_total_gib']:>8.2f}"
                     f"{'  r' + str(r['rank']) if r.get('rank', 16) != 16 else ''}"
                     f"{'  held out' if r.get('held_out') else ''}{_tags(r)}")
    if rows:
        worst = max(abs(r["error"]) for r in rows)
        mean = sum(abs(r["error"]) for r in rows) / len(rows)
        lines.append(f"  {len(rows)} points: mean |error| {mean * 100:.1f}%, worst {worst * 100:.1f}%")
    return "\n".join(lines)


def _tags(row: dict) -> str:
    """The stage and the cards of a point beyond plain single-GPU SFT."""
    tags = []
    if row.get("stage", "sft") != "sft":
        tags.append(row["stage"])
    if row.get("strategy", "single") != "single":
        tags.append(f"{row['gpus']} x {row['strategy']}")
    return "".join("  " + t for t in tags)


def oom_report(points: list[dict], coefficients) -> list[str]:
    """Whether the estimate agrees that out-of-memory points could not fit their card."""
    from core.hardware.estimate import estimate_setup, point_setup

    out = []
    for p in points:
        if p.get("status") != "oom":
            continue
        arch, s = point_setup(p)
        est = estimate_setup(arch, s, coefficients)
        stage = f" {s.stage}" if s.stage != "sft" else ""
        out.append(f"  oom: {p.get('card')} {p.get('model')} {s.method}{stage} {s.seq_len}x{s.micro_batch}: "
                   f"estimate {est.total_gib:.1f} GiB")
    return out


def main(argv=None) -> int:
    from core.hardware.estimate import COEFFS_PATH, calibrate, compare, load_coefficients, read_points

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--points", type=Path, default=DEFAULT_POINTS, help="Measurements (JSON lines).")
    p.add_argument("--card", default="", help="Only points whose card name contains this text.")
    p.add_argument("--write", action="store_true", help=f"Store the refit coefficients in {COEFFS_PATH}.")
    p.add_argument("--base", type=Path, default=None,
                   help="Coefficients to start the fit from (default: the shipped file). Refit from the "
                        "physics seeds with --base tests/fixtures/vram_seed_coefficients.json.")
    p.add_argument("--tolerance", type=float, default=0.10, help="Largest acceptable relative error of a "
                                                                   "fitted point.")
    p.add_argument("--held-out-tolerance", type=float, default=0.05,
                   help="Largest acceptable relative error of a held-out point (the reported figure).")
    p.add_argument("--keep", default="", help="Comma list of coefficients held at their current value "
                                               "(e.g. backends.unsloth.activations.unsloth.layer_scale).")
    p.add_argument("--leave-one-out", nargs="?", const="", default=None, metavar="FILTER",
                   help="Predict each point from a fit to all the others and report those errors (the "
                        "held-out figure when there are few points). FILTER, e.g. 'micro_batch>2' or "
                        "'model=qwen3-14b', limits which points are left out in turn.")
    p.add_argument("--json", action="store_true", help="Print the per-point rows after the fit as JSON.")
    p.add_argument("--markdown", action="store_true",
                   help="Print the README table (rules of thumb, estimate, measured) and exit.")
    args = p.parse_args(argv)
    if args.markdown:
        print(markdown_table(read_points(args.points) if args.points.exists() else []))
        return 0

    if not args.points.exists():
        print(f"error: {args.points} does not exist; run bench/vram_sweep.py on a GPU machine first",
              file=sys.stderr)
        return 2
    points = [pt for pt in read_points(args.points) if args.card.lower() in str(pt.get("card", "")).lower()]
    current = load_coefficients(args.base)
    keep = tuple(k.strip() for k in args.keep.split(",") if k.strip())
    if args.leave_one_out is not None:
        return leave_one_out(points, current, args.leave_one_out, args.held_out_tolerance, keep)
    fit = calibrate(points, current, keep=keep)
    if args.json:
        print(json.dumps(fit.rows, indent=2))
    else:
        print(table(compare(points, current), f"current coefficients ({current.data.get('source', '')[:80]}):"))
        print()
        print(table(fit.rows, "after the refit:"))
        for line in oom_report(points, fit.coefficients):
            print(line)
        changed = {k: v for k, v in _flat(fit.coefficients.data).items() if _flat(current.data).get(k) != v}
        print("\ncoefficients that change:")
        for k, v in sorted(changed.items()):
            print(f"  {k}: {_flat(current.data).get(k)} -> {v}")
    held = held_out_summary(fit.rows)
    if not args.json:
        print("\n" + held["text"])
    if args.write:
        COEFFS_PATH.write_text(fit.coefficients.dumps(), encoding="utf-8")
        print(f"wrote {COEFFS_PATH}")
        report = args.points.with_name("vram_fit.json")
        report.write_text(json.dumps({k: v for k, v in held.items() if k != "text"}, indent=2) + "\n",
                          encoding="utf-8")
        print(f"wrote {report}")
    status = 0
    bad = [r for r in fit.rows if abs(r["error"]) > args.tolerance and not r["held_out"]]
    if bad:
        print(f"{len(bad)} fitted point(s) are more than {args.tolerance:.0%} off after the fit", file=sys.stderr)
        status = 1
    if held["points"] and held["worst_error"] > args.held_out_tolerance:
        print(f"held-out points are up to {held['worst_error']:.1%} off (target {args.held_out_tolerance:.0%})",
              file=sys.stderr)
        status = 1
    return status


def _matches(point: dict, flt: str) -> bool:
    """``key>N``, ``key<N`` or ``key=value`` on a point's fields; empty matches every point."""
    if not flt:
        return True
    for op in (">", "<", "="):
        if op in flt:
            key, value = (x.strip() for x in flt.split(op, 1))
            have = point.get(key)
            if op == "=":
                return str(have) == value
            if not isinstance(have, (int, float)):
                return False
            return have > float(value) if op == ">" else have < float(value)
    raise SystemExit(f"error: --leave-one-out filter {flt!r}: expected key>N, key<N or key=value")


def leave_one_out(points: list[dict], base, flt: str, tolerance: float, keep: tuple[str, ...] = ()) -> int:
    """Each matching usable point predicted by a fit to every other point."""
    from core.hardware.estimate import calibrate, usable_points

    usable = [dict(p, held_out=False) for p in usable_points(points)]
    rows = []
    for i, p in enumerate(usable):
        if not _matches(p, flt):
            continue
        trial = [dict(q, held_out=(j == i)) for j, q in enumerate(usable)]
        fit = calibrate(trial, base, keep=keep)
        rows += [r for r in fit.rows if r.get("held_out")]
    if not rows:
        print(f"no point matches {flt!r}", file=sys.stderr)
        return 2
    print(table(rows, f"leave-one-out: each point predicted by a fit to the other {len(usable) - 1}"))
    held = held_out_summary(rows)
    print("\n" + held["text"])
    if held["worst_error"] > tolerance:
        print(f"left-out points are up to {held['worst_error']:.1%} off (target {tolerance:.0%})", file=sys.stderr)
        return 1
    return 0


def held_out_summary(rows: list[dict]) -> dict:
    """The figure to report: the fit's error on points it never saw, per backend, allocated and NVML."""
    held = [r for r in rows if r.get("held_out")]
    out = {"points": len(held), "fitted_points": len(rows) - len(held), "per_backend": {}, "rows": held}
    if not held:
        out.update(worst_error=None, worst_nvml_error=None,
                   text="no held-out points (bench/vram_sweep.py --wide marks some); the errors above are "
                        "in-sample")
        return out
    out["worst_error"] = max(abs(r["error"]) for r in held)
    nvml = [abs(r["nvml_error"]) for r in held if r.get("nvml_error") is not None]
    out["worst_nvml_error"] = max(nvml) if nvml else None
    lines = [f"held-out points (kept out of the fit): {len(held)}"]
    for backend in sorted({r["backend"] for r in held}):
        mine = [r for r in held if r["backend"] == backend]
        worst = max(mine, key=lambda r: abs(r["error"]))
        nv = [abs(r["nvml_error"]) for r in mine if r.get("nvml_error") is not None]
        out["per_backend"][backend] = {"points": len(mine), "worst_error": abs(worst["error"]),
                                       "worst_nvml_error": max(nv) if nv else None,
                                       "longest_seq": max(r["seq_len"] for r in mine)}
        lines.append(f"  {backend}: {len(mine)} points up to {max(r['seq_len'] for r in mine)} tokens, worst "
                     f"allocated error {abs(worst['error']):.1%} ({worst['model']} {worst['method']} "
                     f"{worst['seq_len']}x{worst['micro_batch']} r{worst['rank']})"
                     + (f", worst NVML error {max(nv):.1%}" if nv else ""))
    out["text"] = "\n".join(lines)
    return out


def markdown_table(points: list[dict], seq_len: int = 2048, micro_batch: int = 2) -> str:
    """Qwen3 sizes: the static rules of thumb, the estimate and the measured peak (nvidia-smi view:
    NVML used memory) for Unsloth at seq_len x micro_batch, rank 16 on all linear layers."""
    from core.hardware.catalog import load_catalog
    from core.hardware.estimate import estimate_training

    def measured(key: str, method: str) -> str:
        hits = [p for p in points if p.get("model") == key and p.get("method") == method
                and p.get("seq_len") == seq_len and p.get("micro_batch") == micro_batch
                and p.get("backend") == "unsloth" and p.get("status") in ("ok", "oom")
                and p.get("stage", "sft") == "sft" and int(p.get("rank", 16)) == 16]
        if not hits:
            return "—"
        p = hits[-1]
        if p["status"] == "oom":
            return f"OOM ({p.get('card', '?')})"
        return f"{p.get('nvml_used_gib') or p['peak_alloc_gib']:.1f} ({p.get('card', '?')})"

    lines = ["| Model | Rule of thumb FP16 | Rule of thumb 4-bit | Estimate LoRA 16-bit | Measured LoRA "
             "| Estimate QLoRA | Measured QLoRA |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for key, entry in load_catalog().items():
        est = {m: estimate_training(entry.arch, method=m, seq_len=seq_len, micro_batch=micro_batch).total_gib
               for m in ("lora", "qlora")}
        lines.append(f"| {entry.display} | {entry.params_b * 2:.0f} GB | {entry.params_b * 0.85:.1f} GB "
                     f"| {est['lora']:.1f} GiB | {measured(key, 'lora')} | {est['qlora']:.1f} GiB "
                     f"| {measured(key, 'qlora')} |")
    return "\n".join(lines)


def _flat(data: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in data.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[f"{prefix}{k}"] = v
    return out


if __name__ == "__main__":
    sys.exit(main())
