"""Kill -9 a real training run after its first checkpoint, resume it, and check it ends where planned.

The CPU tests do this with the demo model and the PEFT backend; this script does it with whatever
backend the machine picks (Unsloth on a GPU), on bench/train_speed.py's model and mixed rows, with
the GUI's default batching (``train.packing = auto``). One JSON line goes to <out>/resume_check.jsonl.

    python bench/resume_check.py --shape 0.6b --steps 6 --save-steps 2
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import train_speed  # noqa: E402  (bench/ is not a package)

from core.choices import BACKENDS  # noqa: E402  (train_speed put the repository on the path)

ROOT = Path(__file__).resolve().parents[1]


def wait_for(pred, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the worker exited (rc {proc.returncode}) before {what}")
        time.sleep(0.05)
    raise TimeoutError(f"no {what} after {timeout:.0f}s")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", default="0.6b", choices=sorted(train_speed.SHAPES))
    p.add_argument("--work", default="/tmp/qwentune-bench")
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--save-steps", type=int, default=2)
    p.add_argument("--backend", default="auto", choices=BACKENDS)
    p.add_argument("--packing", default="auto")
    p.add_argument("--timeout", type=int, default=300, help="Seconds for each of the two runs.")
    args = p.parse_args(argv)

    import torch
    import yaml

    from core.train import runs

    work = Path(args.work)
    model_dir = work / f"model-{args.shape}"
    train_speed.build_model(args.shape, model_dir)
    train_speed.build_data(work, model_dir, args.seq, uniform_rows=8, mixed_rows=200, seed=7)
    name = f"resume-check-{args.shape}"
    run_dir = work / "runs" / name
    if run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    cfg = {"model": {"name_or_path": str(model_dir), "method": "qlora" if torch.cuda.is_available() else "lora",
                     "backend": args.backend},
           "lora": {"r": 16, "alpha": 16, "dropout": 0.0},
           "train": {"max_steps": args.steps, "save_steps": args.save_steps, "save_total_limit": 3,
                     "micro_batch": 2, "grad_accum": 2, "max_seq_len": args.seq, "logging_steps": 1,
                     "packing": args.packing, "learning_rate": 2e-4},
           "data": {"mix_dir": str(work / "mix-mixed")}, "runs_dir": str(work / "runs")}
    cfg_path = work / f"{name}.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    t0 = time.time()
    # Output to a file, not a pipe: nobody reads a pipe while waiting, and a full one would stall the run.
    first_log = work / f"{name}.first.log"
    with first_log.open("w") as out_file:
        first = subprocess.Popen([sys.executable, "-m", "core", "train", str(cfg_path), "--name", name], cwd=ROOT,
                                 env=env, stdout=out_file, stderr=subprocess.STDOUT)
    ckpt = run_dir / "checkpoints" / f"checkpoint-{args.save_steps}"

    def steps_logged() -> int:
        m = run_dir / runs.METRICS
        rows = [json.loads(x) for x in m.read_text().splitlines() if x.strip()] if m.exists() else []
        return max((r["step"] for r in rows if r.get("loss") is not None), default=0)

    try:
        # trainer_state.json is the last file HF writes into a checkpoint
        wait_for(lambda: (ckpt / "trainer_state.json").exists(), args.timeout, ckpt.name, first)
        first.send_signal(signal.SIGKILL)
        killed_at = steps_logged()
    finally:
        first.kill()  # no-op after the SIGKILL; ends the run when the wait above failed
        first.wait(timeout=60)
    out = first_log.read_text(errors="replace")
    if killed_at >= args.steps:
        raise SystemExit(f"the run finished (step {killed_at}) before it could be killed: raise --steps")
    st = runs.read_status(run_dir)  # read through runs: a dead pid reads as failed + resumable
    after_kill = {"state": st.get("state"), "resumable": st.get("resumable"), "killed_at_step": killed_at}
    second = subprocess.run([sys.executable, "-m", "core", "train", str(run_dir), "--resume"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=args.timeout)
    st = runs.read_status(run_dir)
    metrics = [json.loads(x) for x in (run_dir / runs.METRICS).read_text().splitlines() if x.strip()]
    resumed_steps = sorted({m["step"] for m in metrics if m.get("loss") is not None and m["step"] > args.save_steps})
    res = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu", "shape": args.shape,
           "date": time.strftime("%Y-%m-%d %H:%M"), "steps": args.steps, "save_steps": args.save_steps,
           "after_kill": after_kill, "resume_rc": second.returncode, "state": st.get("state"),
           "step": st.get("step"), "total_steps": st.get("total_steps"), "backend": st.get("backend"),
           "packing": st.get("packing"), "steps_after_checkpoint": len(resumed_steps),
           "first_step_after_checkpoint": resumed_steps[0] if resumed_steps else None,
           "adapter": (run_dir / "adapter" / "adapter_model.safetensors").exists(),
           "wall_s": round(time.time() - t0, 1)}
    res["ok"] = (after_kill["state"] == "failed" and bool(after_kill["resumable"]) and second.returncode == 0
                 and st.get("state") == "done" and st.get("step") == args.steps == st.get("total_steps")
                 and resumed_steps == list(range(args.save_steps + 1, args.steps + 1)) and res["adapter"])
    if not res["ok"]:
        res["log_tail"] = (out[-1500:] + second.stdout[-1500:] + second.stderr[-1500:])
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / "resume_check.jsonl").open("a") as f:
        f.write(json.dumps(res) + "\n")
    print(json.dumps(res, indent=1))
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
