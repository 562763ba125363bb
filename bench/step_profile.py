"""Where a training step's time goes: QwenTune's trainer vs a bare Unsloth loop, in ONE process.

Run on a GPU machine:

    python bench/step_profile.py --shape 8b --out bench/results

bench/train_speed.py compares whole runs in separate processes (the headline figures). This one
loads the model once (through core.train.backends, as a run does), then times on that same model:
  * bare      the bare Unsloth loop of train_speed.py (8-bit AdamW, grad clipping, one sync a step, frozen heap)
  * variants  the worker's trainer (core.train.worker.prepare_trainer: TRL SFTTrainer + our
              callbacks + the token counter), as is and with one thing changed each, e.g.
              no-callbacks, padding_free, no-clip
and profiles one steady step of each with torch.profiler: GPU busy time vs wall time, host syncs
(aten::item / _local_scalar_dense) and the host ops that cost the most. A trainer that is slower
than the bare loop with the same GPU busy time is losing the difference on the host.
Results are appended to <out>/step_profile.jsonl with the card's name.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import train_speed  # noqa: E402  (after the sys.path line above)

SYNC_OPS = ("aten::item", "aten::_local_scalar_dense", "cudaStreamSynchronize", "cudaDeviceSynchronize",
            "cudaEventSynchronize", "cudaMemcpyAsync")
# Forward and backward attention kernels as the dispatcher names them (packed rows without a
# variable-length kernel call one of these per segment).
ATTENTION_OPS = {"aten::_scaled_dot_product_flash_attention", "aten::_scaled_dot_product_efficient_attention",
                 "aten::_scaled_dot_product_cudnn_attention", "aten::_flash_attention_forward",
                 "aten::_scaled_dot_product_flash_attention_backward",
                 "aten::_scaled_dot_product_efficient_attention_backward",
                 "aten::_scaled_dot_product_cudnn_attention_backward", "aten::_flash_attention_backward",
                 "aten::_scaled_dot_product_flash_attention_for_cpu",
                 "aten::_scaled_dot_product_flash_attention_for_cpu_backward"}
VARIANTS = {
    # name: (train overrides, keep our callbacks)
    "worker": ({}, True),
    "no-callbacks": ({}, False),
    "padding_free": ({"packing": "padding_free"}, True),
    "packing": ({"packing": "packing"}, True),
    "bucket": ({"packing": "bucket"}, True),
    "padded": ({"packing": "off"}, True),
    "no-clip": ({"max_grad_norm": 0.0}, True),
    "log-every-5": ({"logging_steps": 5}, True),
    # train.autocast: the worker sets Unsloth's UNSLOTH_MIXED_PRECISION itself while it builds the
    # trainer, so an environment variable here would be overridden
    "worker-no-autocast": ({"autocast": "off"}, True),
    "worker-autocast": ({"autocast": "on"}, True),
    # the worker paces the collector (core.train.heap.CollectorPacing): this one leaves Python's
    # automatic collection on a heap frozen once before training; the next one does not freeze at all
    "worker-gc-auto": ({}, True),
    "worker-no-freeze": ({}, True),
    # the PEFT backend with TRL's SFTTrainer as it is, instead of core.train.lean's subclass
    "stock-trl": ({}, True),
}
# bare-mask: the bare loop with the all-ones attention mask the trainer's collator passes, which
# tells a cost of the masked attention path apart from the trainer's own
BARE = ("bare", "bare-autocast", "bare-mask")


def log(msg: str) -> None:
    print(f"[profile {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def profile_summary(prof, wall_s: float, top: int = 12) -> dict:
    """GPU busy time, host syncs and the costliest host ops of one profiled step."""
    events = prof.key_averages()
    busy_us = sum(e.self_device_time_total for e in events if getattr(e, "device_type", None) is not None
                  and str(e.device_type).endswith("CUDA"))
    syncs = {e.key: e.count for e in events if e.key in SYNC_OPS}
    attention = sum(e.count for e in events if e.key.startswith("aten::") and e.key in ATTENTION_OPS)
    host = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    return {"wall_ms": round(wall_s * 1000, 1), "gpu_busy_ms": round(busy_us / 1000, 1),
            "gpu_busy_frac": round(busy_us / 1e6 / wall_s, 3) if wall_s else None, "syncs": syncs,
            "attention_calls": attention,
            "top_host_ops": [(e.key, round(e.self_cpu_time_total / 1000, 1), e.count) for e in host]}


class HostWatch:
    """Where the host's time goes while training, on Linux (/proc): the training thread's CPU time
    against the wall clock and its involuntary context switches (another thread or process took
    its CPU), the CPU seconds of every other thread of this process by name, the CPUs the training
    thread ran on (sampled once a step), how busy those CPUs and their SMT siblings were, and the
    whole machine's busy CPUs. A step loop that is bound by the host runs at the speed of the core
    it lands on, so two processes can differ without any difference in their code."""

    def __init__(self):
        import threading

        self.tid = threading.get_native_id()
        self.cpus: list[int] = []

    @staticmethod
    def _read(path: str) -> str:
        try:
            return Path(path).read_text()
        except OSError:
            return ""

    def _threads(self) -> dict:
        out = {}
        for task in Path("/proc/self/task").glob("*"):
            stat = self._read(f"{task}/stat")
            if not stat:
                continue
            name = stat[stat.index("(") + 1:stat.rindex(")")]
            fields = stat[stat.rindex(")") + 2:].split()
            out[int(task.name)] = (name, (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"))
        return out

    def _switches(self) -> tuple[int, int]:
        vol = invol = 0
        for line in self._read(f"/proc/self/task/{self.tid}/status").splitlines():
            if line.startswith("voluntary_ctxt_switches"):
                vol = int(line.split()[1])
            elif line.startswith("nonvoluntary_ctxt_switches"):
                invol = int(line.split()[1])
        return vol, invol

    @staticmethod
    def _per_cpu() -> dict:
        """Per CPU (busy ticks, all ticks); steal counts as busy (the CPU was not ours to use)."""
        from bench.cpu_probe import cpu_ticks

        return {cpu: (sum(f[:8]) - f[3] - f[4], sum(f[:8])) for cpu, f in cpu_ticks().items()}

    def step(self) -> None:
        stat = self._read(f"/proc/self/task/{self.tid}/stat")
        if stat:
            self.cpus.append(int(stat[stat.rindex(")") + 2:].split()[36]))

    def __enter__(self):
        self.t = time.perf_counter()
        self.threads0, self.sw0, self.cpu0 = self._threads(), self._switches(), self._per_cpu()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.t
        self.threads1, self.sw1, self.cpu1 = self._threads(), self._switches(), self._per_cpu()

    def summary(self) -> dict:
        if not self.threads1:
            return {}
        from collections import Counter

        def busy(cpu):
            (b0, t0), (b1, t1) = self.cpu0.get(cpu, (0, 0)), self.cpu1.get(cpu, (0, 0))
            return round((b1 - b0) / (t1 - t0), 3) if t1 > t0 else None

        main = self.threads1.get(self.tid, ("?", 0))[1] - self.threads0.get(self.tid, ("?", 0))[1]
        others: dict[str, float] = {}
        for tid, (name, cpu_s) in self.threads1.items():
            if tid != self.tid:
                used = cpu_s - self.threads0.get(tid, (name, 0.0))[1]
                if used > 0:
                    others[name] = round(others.get(name, 0.0) + used, 2)
        visited = Counter(self.cpus)
        siblings = {}
        for cpu in visited:
            sib = self._read(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list").strip()
            siblings[cpu] = {"busy": busy(cpu), "siblings": sib,
                             "siblings_busy": [busy(int(c)) for c in _cpu_list(sib) if int(c) != cpu]}
        total = [busy(c) for c in self.cpu1]
        return {"host": {"wall_s": round(self.wall, 2), "main_cpu_s": round(main, 2),
                         "main_cpu_frac": round(main / self.wall, 3) if self.wall else None,
                         "main_switches": [self.sw1[0] - self.sw0[0], self.sw1[1] - self.sw0[1]],
                         "other_threads_cpu_s": dict(sorted(others.items(), key=lambda kv: -kv[1])[:8]),
                         "main_cpus": dict(visited.most_common()), "main_cpu_detail": siblings,
                         "machine_busy_cpus": round(sum(b for b in total if b), 2)}}


def _cpu_list(text: str) -> list[int]:
    out = []
    for part in text.split(","):
        if "-" in part:
            a, b = part.split("-")
            out.extend(range(int(a), int(b) + 1))
        elif part:
            out.append(int(part))
    return out


class GcWatch:
    """Pauses of Python's garbage collector while training (gc.callbacks)."""

    def __init__(self):
        self.pauses: list[tuple[int, float]] = []
        self.t = None

    def __call__(self, phase, info):
        if phase == "start":
            self.t = time.perf_counter()
        elif self.t is not None:
            self.pauses.append((info["generation"], time.perf_counter() - self.t))
            self.t = None

    def __enter__(self):
        import gc

        self.tracked = len(gc.get_objects())
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc):
        import gc

        gc.callbacks.remove(self)

    def summary(self) -> dict:
        full = [d for g, d in self.pauses if g == 2]
        return {"gc_tracked_objects": self.tracked, "gc_collections": len(self.pauses),
                "gc_full": len(full), "gc_full_ms": round(sum(full) * 1000, 1),
                "gc_full_max_ms": round(max(full, default=0) * 1000, 1),
                "gc_total_ms": round(sum(d for _, d in self.pauses) * 1000, 1)}


def _profiler():
    import torch

    acts = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        acts.append(torch.profiler.ProfilerActivity.CUDA)
    return torch.profiler.profile(activities=acts)


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def run_bare(model, batches, args, autocast: bool = False, mask: bool = False) -> dict:

    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        import bitsandbytes as bnb

        opt = bnb.optim.AdamW8bit(params, lr=2e-4, weight_decay=0.01)
    else:  # the CPU smoke run of this script (--shape tiny --backend peft)
        opt = torch.optim.AdamW(params, lr=2e-4, weight_decay=0.01)
    model.train()
    times, tokens = [], []
    prof_out = None

    def step(k):
        micro = [batches[(k * args.accum + m) % len(batches)] for m in range(args.accum)]
        return train_speed.bare_step(model, opt, params, micro, device, autocast, mask=mask)[0]

    _sync()
    # the heap as the worker freezes it before training (bench/train_grid.py's bare loop does the
    # same), so the collector's walks over the libraries and the model land on neither side
    from core.train.heap import settle

    settle()
    watch = GcWatch().__enter__()
    host = HostWatch().__enter__()
    t = time.perf_counter()
    for k in range(args.steps):
        host.step()
        if k == args.profile_step:
            with _profiler() as prof:
                t0 = time.perf_counter()
                n = step(k)
                _sync()
                wall = time.perf_counter() - t0
            prof_out = profile_summary(prof, wall)
            _sync()
            t = time.perf_counter()  # the profiled step is not timed
            continue
        n = step(k)
        now = time.perf_counter()
        times.append(now - t)
        tokens.append(n)
        t = now
    host.__exit__()
    watch.__exit__()
    return _timing(times, tokens, args.warmup) | {"profile": prof_out} | watch.summary() | host.summary()


def _timing(times, tokens, warmup) -> dict:
    steady = times[warmup:] if len(times) > warmup else times
    tok = tokens[warmup:] if len(tokens) > warmup else tokens
    return {"step_s_median": round(statistics.median(steady), 4), "step_s_mean": round(statistics.mean(steady), 4),
            "steps_timed": len(steady), "tokens_per_s": sum(tok) / sum(steady),
            "step_s_all": [round(x, 4) for x in times]}


def run_variant(name, base_cfg, loaded, train_tok, args) -> dict:

    import torch
    from transformers import TrainerCallback

    from core.train import worker

    overrides, keep_callbacks = VARIANTS[name]
    cfg = copy.deepcopy(base_cfg)
    for key, value in overrides.items():
        setattr(cfg.train, key, value)
    cfg.name = f"profile-{name}"
    run_dir = Path(cfg.runs_dir) / cfg.name
    import shutil

    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    from core.train import lean

    for_backend = lean.for_backend
    if name == "stock-trl":
        lean.for_backend = lambda base, *_a, **_k: base
    try:
        prepared = worker.prepare_trainer(cfg, run_dir, loaded, train_tok, None, echo=lambda m: None)
    finally:
        lean.for_backend = for_backend
    trainer = prepared.trainer
    if not keep_callbacks:
        trainer.remove_callback(prepared.progress)
    if name in ("worker-gc-auto", "worker-no-freeze"):
        trainer.remove_callback(prepared.pacing)
    counter = prepared.counter

    class Timer(TrainerCallback):
        def __init__(self):
            self.times, self.t, self.prof, self.prof_t0 = [], None, None, None
            self.tokens, self.tok_last = [], 0  # real tokens per step, from the worker's collator counter
            self.profile = None
            self.log_keys = set()

        def on_train_begin(self, a, state, control, **kw):
            _sync()
            self.t = time.perf_counter()
            self.tok_last = counter.tokens

        def on_step_begin(self, a, state, control, **kw):
            if state.global_step == args.profile_step:
                _sync()
                self.prof = _profiler()
                self.prof.__enter__()
                self.prof_t0 = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            now = time.perf_counter()
            host.step()
            if self.prof is not None:
                _sync()
                wall = time.perf_counter() - self.prof_t0
                self.prof.__exit__(None, None, None)
                self.profile = profile_summary(self.prof, wall)
                self.prof = None
                _sync()
                self.t = time.perf_counter()  # the profiled step is not timed
                self.tok_last = counter.tokens
                return
            self.times.append(now - self.t)
            self.t = now
            # The trainer collates a step's micro-batches before running it, so the counter has
            # counted exactly this step's rows here.
            self.tokens.append(counter.tokens - self.tok_last)
            self.tok_last = counter.tokens

        def on_log(self, a, state, control, logs=None, **kw):
            self.log_keys |= set(logs or {})

    timer = Timer()
    trainer.add_callback(timer)
    if name != "worker-no-freeze":  # frozen before GcWatch counts the heap (the pacing freezes it again)
        from core.train.heap import settle

        settle()
    t0 = time.perf_counter()
    try:
        with GcWatch() as watch, HostWatch() as host:
            trainer.train()
    finally:
        prepared.pacing.release()
    wall = time.perf_counter() - t0
    info = {"variant": name, "overrides": overrides, "callbacks": keep_callbacks, "packing": prepared.packing,
            "trainer_class": f"{type(trainer).__module__}.{type(trainer).__qualname__}",
            "compute_loss": getattr(type(trainer).compute_loss, "__module__", "?"),
            "log_keys": sorted(timer.log_keys), "train_wall_s": round(wall, 2),
            "bf16_autocast": bool(trainer.args.bf16), "fp16_autocast": bool(trainer.args.fp16),
            "mixed_precision": getattr(trainer.args, "mixed_precision", None),
            "profile": timer.profile}
    info |= _timing(timer.times, timer.tokens, args.warmup) | watch.summary() | host.summary()
    del trainer, prepared
    gc.collect()
    torch.cuda.empty_cache()
    return info


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", default="8b", choices=sorted(train_speed.SHAPES))
    p.add_argument("--work", default="/tmp/qwentune-bench")
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--steps", type=int, default=10, help="Optimizer steps per measurement.")
    p.add_argument("--warmup", type=int, default=3, help="Steps left out of the timing.")
    p.add_argument("--profile-step", type=int, default=-1, help="The step profiled (not timed); -1: the last.")
    p.add_argument("--accum", type=int, default=2)
    p.add_argument("--micro-batch", type=int, default=2)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--method", default="qlora", choices=("qlora", "lora"), help="QLoRA (nf4) or 16-bit LoRA.")
    p.add_argument("--backend", default="unsloth", choices=("unsloth", "peft"))
    p.add_argument("--variants", default="bare,bare-autocast,worker,worker-no-autocast",
                   help="Comma list of: " + ", ".join(BARE + tuple(VARIANTS)) + ". Each runs in its own process "
                        "(torch.compile caches and Unsloth's patches of one would skew the next).")
    p.add_argument("--mix", default="uniform", choices=("uniform", "mixed"),
                   help="Rows: all about --seq tokens, or short chat + long reasoning (train_speed.py's "
                        "two sets). The bare loop always takes uniform rows.")
    p.add_argument("--only", help=argparse.SUPPRESS)  # internal: run one variant in this process
    p.add_argument("--phase-timeout", type=int, default=300)
    args = p.parse_args(argv)
    if args.profile_step < 0:
        args.profile_step += args.steps
    if not args.only:
        return _parent(args, argv if argv is not None else sys.argv[1:])

    import os

    os.environ.setdefault("UNSLOTH_DISABLE_STATISTICS", "1")
    from core.train import backends

    backends.activate(args.backend)
    import torch

    from core.config import RunConfig
    from core.data.mixdir import read_mix_dir
    from core.settings import from_dict
    from core.train.data import tokenize

    work = Path(args.work)
    model_dir = work / f"model-{args.shape}"
    cfg = from_dict(RunConfig, {
        "model": {"name_or_path": str(model_dir), "method": args.method,
                  "quant": "nf4" if args.method == "qlora" else "auto", "backend": args.backend},
        "lora": {"r": args.rank, "alpha": args.rank, "dropout": 0.0, "target_modules": train_speed.LINEARS},
        "train": {"max_steps": args.steps, "micro_batch": args.micro_batch, "grad_accum": args.accum,
                  "max_seq_len": args.seq, "learning_rate": 2e-4, "warmup_steps": 0, "logging_steps": 1,
                  "save_steps": 100000, "eval_steps": 0, "packing": "auto", "optimizer": "auto",
                  "gradient_checkpointing": "unsloth" if args.backend == "unsloth" else "on"},
        "data": {"mix_dir": str(work / f"mix-{args.mix}")},
        "runs_dir": str(work / "profile-runs"),
    })
    t0 = time.time()
    loaded = backends.load(cfg, model_dir, args.backend)
    log(f"model loaded in {time.time() - t0:.1f}s")
    train, _, _ = read_mix_dir(work / f"mix-{args.mix}")
    train_tok = tokenize(train, loaded.tokenizer, cfg.train)
    batches = train_speed._batches(work, model_dir, args.seq, args.micro_batch)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    common = {"device": device, "shape": args.shape, "method": args.method, "seq": args.seq,
              "micro_batch": args.micro_batch, "accum": args.accum, "steps": args.steps, "warmup": args.warmup,
              "rank": args.rank,
              "date": time.strftime("%Y-%m-%d %H:%M"), "torch": torch.__version__}
    dtypes = sorted({str(p.dtype) for p in loaded.model.parameters() if p.requires_grad})
    name = args.only
    if name in BARE:
        res = {"variant": name} | run_bare(loaded.model, batches, args, autocast=name == "bare-autocast",
                                           mask=name == "bare-mask")
    else:
        res = run_variant(name, cfg, loaded, train_tok, args)
    print("RESULT " + json.dumps(dict(common, trainable_dtypes=dtypes, **res)), flush=True)
    return 0


def _parent(args, argv: list[str]) -> int:
    """Build the model and data once, then one child process per variant; results to the jsonl."""
    import subprocess

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    model_dir = work / f"model-{args.shape}"
    train_speed.build_model(args.shape, model_dir)
    rows = (args.steps + 2) * args.accum * args.micro_batch + 4
    train_speed.build_data(work, model_dir, args.seq, uniform_rows=rows, mixed_rows=max(200, rows * 6), seed=7)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for name in [v for v in args.variants.split(",") if v]:
        if name not in BARE and name not in VARIANTS:
            raise SystemExit(f"unknown variant {name!r}; choose from {', '.join(BARE + tuple(VARIANTS))}")
        t = time.time()
        try:
            proc = subprocess.run([sys.executable, __file__, *argv, "--only", name], cwd=ROOT, capture_output=True,
                                  text=True, timeout=args.phase_timeout)
        except subprocess.TimeoutExpired as exc:  # the next variants are still worth measuring
            out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            proc = subprocess.CompletedProcess(exc.cmd, -9, out, f"timed out after {args.phase_timeout}s")
        lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            log(f"{name} FAILED (rc {proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}")
            res = {"variant": name, "error": (proc.stdout + proc.stderr)[-2000:]}
        else:
            res = json.loads(lines[-1][len("RESULT "):])
            results.append(res)
            prof = res.get("profile") or {}
            log(f"{name}: {res['tokens_per_s']:.0f} tok/s, median step {res['step_s_median'] * 1000:.1f} ms; "
                f"profiled step {prof.get('wall_ms')} ms, GPU busy {prof.get('gpu_busy_ms')} ms, "
                f"attention calls {prof.get('attention_calls')}, syncs {prof.get('syncs')}; "
                f"trainable {res.get('trainable_dtypes')}, "
                f"bf16 autocast {res.get('bf16_autocast', name == 'bare-autocast')}; gc: {res.get('gc_full')} full "
                f"collections, {res.get('gc_full_ms')} ms (max {res.get('gc_full_max_ms')}), "
                f"{res.get('gc_tracked_objects')} objects")
            if res.get("host"):
                log(f"    host: {json.dumps(res['host'])}")
            for op in prof.get("top_host_ops", [])[:8]:
                log(f"    host {op[1]:8.1f} ms  x{op[2]:<6} {op[0]}")
        with (out_dir / "step_profile.jsonl").open("a") as f:
            f.write(json.dumps(res) + "\n")
        log(f"{name} took {time.time() - t:.0f}s")
    bare = [r["tokens_per_s"] for r in results if r["variant"] == "bare"]
    print("\n| variant | tokens/s | vs bare | median step ms | profiled: wall ms | GPU busy ms | attention calls "
          "| syncs |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        prof = r.get("profile") or {}
        ratio = f"{r['tokens_per_s'] / bare[0]:.3f}" if bare else ""
        print(f"| {r['variant']} | {r['tokens_per_s']:.0f} | {ratio} | {r['step_s_median'] * 1000:.1f} | "
              f"{prof.get('wall_ms')} | {prof.get('gpu_busy_ms')} | {prof.get('attention_calls')} | "
              f"{sum((prof.get('syncs') or {}).values())} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
