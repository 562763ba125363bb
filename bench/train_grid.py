"""Trainer vs bare loop across a grid of shapes, methods and (sequence x micro-batch) settings.

    python bench/train_grid.py --shapes 0.6b,8b --methods qlora --seqs 1024x8,2048x2

For every point the project's trainer (`core.train.worker.run`: the code `python -m core train` runs
for the GUI, with the GUI's defaults: packing auto, logging every step, status.json, the log tee)
is timed against a bare loop (plain forward / backward / 8-bit AdamW step, nothing else) on the
same checkpoint, loaded by the project's loader (core.train.backends.load: Unsloth on a GPU):

    --layout split (the default): per (shape, method) two fresh processes, one after the other
      bare child      load the model, bare loop at every point, leave the results in --work
      trainer child   load the model, the trainer at every point (worker.run with that model
                      handed in), record each point beside the bare child's figure
    --layout shared: one process loads once, runs the bare loop at every point, then the trainer
    --layout paired: one fresh process per (shape, method), the trainer with one bare step right
      after each of its steps, on the same thread and model (PairedSteps): at host-bound points a
      process runs at the speed of the virtual CPU it lands on, up to 2x apart between the CPUs of a
      shared host and drifting within seconds, and a pair of steps back to back meets one speed

Split is the user's path: `python -m core train` starts in a fresh process, never after another
loop on the same model. On one load, Unsloth resets its compiled graphs when a manual forward /
backward ran before trainer.train(), so the trainer recompiles after the bare loop; on the H200
the shared layout's 4B LoRA points read 0.84x / 0.89x / 1.14x (1024 x 8 / 2048 x 2 / 4096 x 1),
split 0.97x / 1.05x / 1.03x. The bare loop cannot run after the trainer instead: a trainer run
leaves the model without Unsloth's gradient checkpointing, and the same bare loop then peaked at
35.6 GiB against the trainer's 9.4 GiB (Qwen3-4B, 1024 x 8) and ran up to 1.8x faster, an anchor
that measures another memory plan. Each row therefore carries ``anchor_check``: a bare peak more
than ANCHOR_PEAK_TOLERANCE away from the trainer's marks the ratio as not comparable (the summary
lists such points and leaves them out of the worst ratio).

The bare loop runs on a frozen heap (core.train.heap.settle), as the worker trains: otherwise
Python's collector walks the libraries and the model in the bare loop only. It keeps Python's
automatic collection, as a hand-written loop does; the worker collects between steps
(core.train.heap.CollectorPacing).

Each point is appended to <out>/train_grid.jsonl as soon as it is measured, so a call cut short
keeps what it measured; a summary line (worst ratio) closes every call. Reported per point:
non-padding tokens/s of both, their ratio, every step's time of both (``step_s_all``,
``bare_step_s_all``) and the ratio of their median timed steps (``ratio_median``, blind to a single
slow step), the trainer's garbage-collector counts, peak allocated GiB, and model FLOP utilisation:

    mfu       (6 x N + 12 x layers x heads x head_dim x seq) x tokens/s / peak FLOP/s
              (N: parameters of every matmul, LM head included; the PaLM paper's count)
    mfu_lora  the FLOPs a LoRA step really does: frozen weights get no weight gradient
              (bench/train_speed.py's flops_per_token)

``--repeats N`` runs every (shape, method) child (or pair of children) N times, round the whole
list, each with its own loads, bare loop and trainer; the summary judges each point by the median
of its N ratios. On the small shapes a single call's ratio moved by up to 0.46x between calls, so
one child cannot settle 0.95x there.

``--auto-compare`` adds, per point, the trainer at micro_batch 2 x grad_accum 4 and at micro_batch
auto x grad_accum 4 (the same 8 rows per optimizer step). ``--packings`` adds trainer runs at other
train.packing modes (e.g. padding_free) beside auto's choice on these uniform rows, and
``--autocasts on`` a trainer run with Unsloth's bf16 autocast beside train.autocast auto's choice.
Every trainer run in a child starts from the adapter as loaded and records each step's loss
(``loss_all``), so two runs' losses compare step by step; the second run on a load is not a fresh
process's, so read its speed as such. ``--cpus 2-9`` pins both sides of every run to the same CPUs;
``--cpus fastest:3`` probes every CPU before each child and pins it to the three that run Python
fastest at that moment (bench/cpu_probe.py): at host-bound points a process runs at the speed of the
virtual CPU it lands on, and that is not the same on every CPU of a shared host.

Models are random-weight checkpoints with Qwen3's real shapes (bench/train_speed.py builds them;
no download), or with --weights sparse zero-weight sparse files of the same shapes (no disk). Both
sides load through the project's loader, so the ratio isolates the trainer (same weights, same
kernels); bench/train_speed.py's bare phase loads its own FastLanguageModel for an independent check.
The tiny shape with --backend peft runs the whole script on a CPU (tests/bench).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for p in (ROOT, ROOT / "bench"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from train_speed import SHAPES, build_model, fit_conv, flops_per_token, log, peak_tflops  # noqa: E402

from core.choices import BACKENDS  # noqa: E402

DEFAULT_SEQS = "1024x8,2048x2,4096x1"
LAYOUTS = ("split", "shared", "paired")
# Trainer and bare loop share one model and one memory plan: peaks further apart than this mean
# one of them ran with other gradient checkpointing (or other kernels), so their ratio compares
# two different programs.
ANCHOR_PEAK_TOLERANCE = 0.15


def parse_seqs(text: str) -> list[tuple[int, int]]:
    out = []
    for item in text.split(","):
        try:
            seq, mb = item.lower().split("x")
            out.append((int(seq), int(mb)))
        except ValueError:
            raise SystemExit(f"--seqs: {item!r} is not SEQxMICRO_BATCH (e.g. 2048x2)") from None
    return out


def palm_flops_per_token(shape: dict, seq: int) -> float:
    """6N + 12 L H D T: every matmul's forward and backward, plus attention scores and values."""
    h, i, layers = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"]
    q = shape["num_attention_heads"] * shape["head_dim"]
    kv = shape["num_key_value_heads"] * shape["head_dim"]
    n = layers * (h * q + 2 * h * kv + q * h + 3 * h * i) + h * shape["vocab_size"]
    return 6 * n + 12 * layers * shape["num_attention_heads"] * shape["head_dim"] * seq


def build_uniform(mix_dir: Path, tok, seq: int, rows: int, seed: int) -> None:
    """Rows of (nearly) exactly ``seq`` tokens, half of them with reasoning; a few distinct rows
    repeated (content does not change the speed)."""
    from core.data.mixdir import write_mix_dir

    if (mix_dir / "manifest.json").exists():
        return
    rng = random.Random(seed)
    distinct = [fit_conv(tok, rng, seq, reasoning=bool(k % 2)) for k in range(min(rows, 16))]
    convs = [distinct[k % len(distinct)] for k in range(rows)]
    write_mix_dir(mix_dir, [{"conversation": c.to_json(), "text": "", "n_tokens": 0, "source": c.source}
                            for c in convs], [], {"bench": "uniform", "seq": seq})


def mix_path(work: Path, seq: int) -> Path:
    return work / f"grid-mix-{seq}"


# --weights sparse: bench/vram_sweep.py's zero-weight checkpoints of the catalog shapes (no disk,
# nothing to write; the matmuls cost the same whatever the values)
SPARSE_KEYS = {"0.6b": "qwen3-0.6b", "4b": "qwen3-4b", "8b": "qwen3-8b", "14b": "qwen3-14b"}


def model_dir(args, shape: str) -> Path:
    if args.weights == "sparse":
        return Path(args.work) / "shapes" / SPARSE_KEYS[shape]
    return Path(args.work) / f"model-{shape}"


def anchor_check(trainer_peak: float | None, bare_peak: float | None) -> str:
    """"ok" where the trainer and the bare loop held the same memory (the same program); otherwise
    why their ratio is not comparable."""
    if not trainer_peak or not bare_peak:
        return "ok"  # a CPU run records no peak
    if abs(bare_peak - trainer_peak) <= ANCHOR_PEAK_TOLERANCE * trainer_peak:
        return "ok"
    return (f"bare peak {bare_peak:.2f} GiB against the trainer's {trainer_peak:.2f} GiB: "
            "they ran different memory plans")


# -------------------------------------------------------------------------------- the child
def median_ratio(trainer_steps: list | None, bare_steps: list | None, warmup: int) -> float | None:
    """Bare median step time over the trainer's, over the timed steps: the ratio without the odd slow
    step (a collector's pause, a recompile) that the tokens/s ratio carries. Both take the same rows
    per step, so step times compare as tokens/s do."""
    import statistics

    t, b = (trainer_steps or [])[warmup:], (bare_steps or [])[warmup:]
    if not t or not b:
        return None
    return round(statistics.median(b) / statistics.median(t), 4)


def base_config(args, shape: str, method: str, seq: int, mb, accum: int, packing: str, name: str,
                autocast: str = "auto") -> dict:
    work = Path(args.work)
    return {
        "name": name, "runs_dir": str(work / "grid-runs"),
        "model": {"name_or_path": str(model_dir(args, shape)), "method": method,
                  "quant": "nf4" if method == "qlora" else "auto", "backend": args.backend},
        "lora": {"r": args.rank, "alpha": args.rank, "dropout": 0.0},
        "train": {"max_steps": args.steps, "micro_batch": mb, "grad_accum": accum, "max_seq_len": seq,
                  "warmup_steps": 0, "save_steps": 100000, "eval_steps": 0, "packing": packing,
                  "autocast": autocast},
        "data": {"mix_dir": str(mix_path(work, seq))},
    }


def bare_batches(mix_dir: Path, tok, seq: int, micro_batch: int):
    import torch

    from core.config import TrainConfig
    from core.data.mixdir import read_mix_dir
    from core.train.data import tokenize

    train, _, _ = read_mix_dir(mix_dir)
    data = tokenize(train, tok, TrainConfig(max_seq_len=seq, micro_batch=micro_batch))
    out = []
    for k in range(0, data.rows - micro_batch + 1, micro_batch):
        n = min(len(x) for x in data.input_ids[k:k + micro_batch])  # equal lengths: no padding at all
        ids = torch.tensor([x[:n] for x in data.input_ids[k:k + micro_batch]])
        mask = torch.tensor([x[:n] for x in data.masks[k:k + micro_batch]])
        out.append((ids, ids.masked_fill(mask == 0, -100)))
    return out


def bare_setup(loaded, args, seq: int, mb: int):
    """What the bare loop trains with: the adapter's parameters, its own optimizer (8-bit AdamW on a
    GPU, as the trainer's default) and enough micro-batches for every step."""
    import torch

    params = [p for p in loaded.model.parameters() if p.requires_grad]
    if loaded.device == "cuda":
        import bitsandbytes as bnb

        opt = bnb.optim.AdamW8bit(params, lr=2e-4, weight_decay=0.01)
    else:
        opt = torch.optim.AdamW(params, lr=2e-4, weight_decay=0.01)
    batches = bare_batches(mix_path(Path(args.work), seq), loaded.tokenizer, seq, mb)
    need = args.steps * args.accum
    if len(batches) < need:
        raise RuntimeError(f"need {need} micro-batches of {mb} rows, have {len(batches)}")
    return params, opt, batches


def run_bare(loaded, args, seq: int, mb: int) -> dict:
    """The bare loop: forward, backward per micro-batch, clip, optimizer step; reading the loss once a
    step is the only sync (what a trainer's per-step logging needs too)."""
    import torch
    from train_speed import bare_step

    cuda = loaded.device == "cuda"
    params, opt, batches = bare_setup(loaded, args, seq, mb)
    loaded.model.train()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    # the heap as the worker leaves it before training (frozen), so neither side pays the garbage
    # collector's walks over the libraries and the model that the other is spared
    from core.train.heap import settle

    settle()
    from step_profile import GcWatch

    watch = GcWatch().__enter__()
    t_start, tokens, times = None, 0, []
    autocast = args.bare_autocast == "on" and cuda
    t_prev = time.perf_counter()
    for step in range(args.steps):
        if step == args.warmup:
            if cuda:
                torch.cuda.synchronize()
            t_start, tokens = time.perf_counter(), 0
        micro = batches[step * args.accum:(step + 1) * args.accum]
        try:
            n, _loss = bare_step(loaded.model, opt, params, micro, device=loaded.device, autocast=autocast)
        except RuntimeError as exc:  # fp32 LoRA weights against bf16 activations without autocast
            if args.bare_autocast != "auto" or autocast or "dtype" not in str(exc).lower() or step:
                raise
            log(f"bare loop: {str(exc).splitlines()[0][:200]}; retrying with bf16 autocast")
            autocast = True
            opt.zero_grad(set_to_none=True)
            n, _loss = bare_step(loaded.model, opt, params, micro, device=loaded.device, autocast=autocast)
        tokens += n
        now = time.perf_counter()  # bare_step read the loss: the step's work is done
        times.append(round(now - t_prev, 4))
        t_prev = now
    if cuda:
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - t_start
    watch.__exit__()
    del opt
    import gc

    gc.unfreeze()
    return {"tokens_per_s": tokens / elapsed, "step_s": elapsed / (args.steps - args.warmup), "autocast": autocast,
            "step_s_all": times, "peak_alloc_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
            **watch.summary()}


class PairedSteps:
    """--layout paired: one bare step right after every trainer step, in the trainer's own process.

    At host-bound points each process runs at the speed of the virtual CPU it lands on, which on a
    shared host differs by up to 2x between CPUs and drifts within seconds (bench/cpu_probe.py), so
    two processes compare their CPUs as much as their code. A pair of steps, run back to back on the
    same thread, the same core and the same model, meets the same CPU. The trainer's share of a pair
    runs from the end of the previous bare step to this step's end (its data loading, logging,
    callbacks and the step itself: everything between two of its steps); the bare step is the
    bare loop's (bench/train_speed.bare_step: forward / backward per micro-batch, clipping, 8-bit AdamW
    with its own state) on its own batches. Added after the worker's callbacks, so it times them too.
    The bare steps move the same adapter, so the trainer's losses are not a plain run's."""

    def __init__(self, loaded, args, seq: int, mb: int):
        import torch

        self.torch = torch
        self.loaded, self.accum = loaded, args.accum
        self.cuda = loaded.device == "cuda"
        self.params, self.opt, self.batches = bare_setup(loaded, args, seq, mb)
        self.autocast = args.bare_autocast == "on" and self.cuda
        self.trainer_s: list[float] = []
        self.bare_s: list[float] = []
        self.bare_tokens: list[int] = []
        self.t_prev = None

    def callback(self):
        from transformers import TrainerCallback

        pair = self

        class _Paired(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                pair.t_prev = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                pair.step()

        return _Paired()

    def step(self) -> None:
        from train_speed import bare_step

        if self.cuda:
            self.torch.cuda.synchronize()  # the trainer's step is done on the GPU too
        t = time.perf_counter()
        self.trainer_s.append(round(t - self.t_prev, 4))
        k = len(self.bare_s)
        micro = self.batches[k * self.accum:(k + 1) * self.accum]
        # with the all-ones attention mask the trainer's collator passes, so both sides feed the model
        # the same inputs (the first bare step still compiles once, 8-9 s on an H200: a warmup step)
        n, _loss = bare_step(self.loaded.model, self.opt, self.params, micro, device=self.loaded.device,
                             autocast=self.autocast, mask=True)  # reads the loss: its work is done on return
        self.t_prev = time.perf_counter()
        self.bare_s.append(round(self.t_prev - t, 4))
        self.bare_tokens.append(n)


def run_paired(loaded, args, cfg_dict: dict, seq: int, mb: int) -> dict:
    """The trainer with a bare step after each of its steps (PairedSteps); the figures of both."""
    import statistics

    pair = PairedSteps(loaded, args, seq, mb)
    res = run_trainer(loaded, args, cfg_dict, extra_callback=pair.callback())
    w = args.warmup
    if len(pair.trainer_s) != args.steps:
        raise RuntimeError(f"paired steps: {len(pair.trainer_s)} trainer steps timed, expected {args.steps}")
    per_step = res.pop("tokens_all")
    ratios = sorted(b / t for t, b in zip(pair.trainer_s[w:], pair.bare_s[w:]))
    trainer = {**res, "tokens_per_s": sum(per_step[w:]) / sum(pair.trainer_s[w:]),
               "step_s": statistics.median(pair.trainer_s[w:]), "step_s_all": pair.trainer_s,
               # each pair's bare step time over its trainer step time, at its quartiles
               "pair_ratio_quartiles": [round(ratios[int(q * (len(ratios) - 1))], 4) for q in (0.25, 0.5, 0.75)]}
    # one process, one memory plan: the peak is both sides' (anchor_check has nothing to tell apart)
    bare = {"tokens_per_s": sum(pair.bare_tokens[w:]) / sum(pair.bare_s[w:]),
            "step_s": statistics.median(pair.bare_s[w:]), "step_s_all": pair.bare_s, "autocast": pair.autocast,
            "peak_alloc_gib": None}
    return {"trainer": trainer, "bare": bare}


def run_trainer(loaded, args, cfg_dict: dict, extra_callback=None) -> dict:
    """worker.run, in this process, with the loaded model handed to it instead of a second load;
    ``extra_callback`` goes after the worker's own callbacks."""
    import shutil

    from core.config import RunConfig
    from core.settings import from_dict
    from core.train import backends, worker

    cfg = from_dict(RunConfig, cfg_dict)
    run_dir = Path(cfg.runs_dir) / cfg.name
    shutil.rmtree(run_dir, ignore_errors=True)
    from step_profile import GcWatch

    original, original_prepare = backends.load, worker.prepare_trainer
    backends.load = lambda *_a, **_k: loaded
    if extra_callback is not None:
        def prepare(*a, **k):
            prepared = original_prepare(*a, **k)
            prepared.trainer.add_callback(extra_callback)
            return prepared

        worker.prepare_trainer = prepare
    watch = GcWatch()
    try:
        with watch:
            rc = worker.run(cfg)
    finally:
        backends.load, worker.prepare_trainer = original, original_prepare
        import gc

        # The worker froze the heap (core.train.heap.settle), its trainer included: let the next run collect it.
        gc.unfreeze()
        gc.collect()
    status = json.loads((run_dir / "status.json").read_text())
    if rc != 0 or status.get("state") != "done":
        tail = (run_dir / "train.log").read_text(errors="replace")[-3000:] if (run_dir / "train.log").exists() else ""
        raise RuntimeError(f"trainer run {cfg.name} failed (rc {rc}, {status.get('error')}):\n{tail}")
    metrics = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    rows = [m for m in metrics if m.get("loss") is not None]
    if [m["step"] for m in rows] != list(range(1, args.steps + 1)):
        raise RuntimeError(f"metrics.jsonl of {cfg.name} misses steps: {[m['step'] for m in rows]}")
    start, end = rows[args.warmup - 1], rows[-1]
    elapsed = end["elapsed_s"] - start["elapsed_s"]
    times = [round(b["elapsed_s"] - a["elapsed_s"], 4) for a, b in zip([{"elapsed_s": 0.0}] + rows, rows)]
    return {"tokens_per_s": (end["tokens"] - start["tokens"]) / elapsed,
            "step_s": elapsed / (end["step"] - start["step"]), "step_s_all": times,
            "tokens_all": [b["tokens"] - a["tokens"] for a, b in zip([{"tokens": 0}] + rows, rows)],
            "loss_all": [round(m["loss"], 5) for m in rows], "autocast": status.get("autocast"),
            "peak_alloc_gib": status.get("peak_alloc_gib"), "nvml_used_gib": status.get("nvml_used_gib"),
            "packing": status.get("packing"), "micro_batch": status.get("micro_batch"),
            "grad_accum": status.get("grad_accum"), "micro_batch_reason": status.get("micro_batch_reason"),
            "backend": status.get("backend"), **watch.summary()}


def parse_cpus(text: str) -> list[int]:
    """"0-3,8" -> [0, 1, 2, 3, 8]."""
    cpus: list[int] = []
    for part in (x.strip() for x in text.split(",") if x.strip()):
        lo, _, hi = part.partition("-")
        cpus += list(range(int(lo), int(hi or lo) + 1))
    return sorted(set(cpus))


def pin_args(args) -> list[str]:
    """The --cpus a child gets. fastest:N probes the CPUs now, just before the child starts, since a
    virtual CPU's speed drifts with what the host's other guests run (bench/cpu_probe.py)."""
    if not args.cpus.startswith("fastest:"):
        return [f"--cpus={args.cpus}"] if args.cpus else []
    import cpu_probe

    result = cpu_probe.probe(rounds=2)
    chosen = cpu_probe.fastest(int(args.cpus.partition(":")[2]), result)
    note = {"policy": args.cpus, "chosen": chosen, "chosen_speed": [result[c]["speed"] for c in chosen],
            **cpu_probe.spread(result),
            "steal_max": max((v["steal"] or 0) for v in result.values())}
    log(f"cpu probe: {note}")
    return [f"--cpus={','.join(map(str, chosen))}", f"--cpu-probe={json.dumps(note)}"]


def child(args) -> int:
    shape, method = args.child.split(":")
    if args.cpus:
        # both sides on the same cores: at host-bound points a step's time is the Python thread's,
        # and a process the scheduler spreads over other cores than its partner's measures the core
        os.sched_setaffinity(0, parse_cpus(args.cpus))
    points = parse_seqs(args.seqs)
    out = Path(args.out)
    from core.config import RunConfig
    from core.settings import from_dict
    from core.train import backends

    backend, _notes = backends.choose_backend(args.backend)
    backends.activate(backend)
    import torch

    longest = max(s for s, _ in points)
    cfg0 = from_dict(RunConfig, base_config(args, shape, method, longest, 1, 1, "off", "load"))
    t0 = time.time()
    loaded = backends.load(cfg0, model_dir(args, shape), backend)
    load_s = time.time() - t0
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    peak = peak_tflops(device)
    common = {"device": device, "shape": shape, "method": method, "backend": loaded.backend, "rank": args.rank,
              "accum": args.accum, "steps": args.steps, "warmup": args.warmup, "load_s": round(load_s, 1),
              "date": time.strftime("%Y-%m-%d %H:%M"), "torch": torch.__version__, "call": args.call,
              "repeat": args.repeat, "layout": args.layout, "cpus": args.cpus or None}
    if args.cpu_probe:
        common["cpu_probe"] = json.loads(args.cpu_probe)
    log(f"{shape} {method}: loaded in {load_s:.0f}s on {device}")

    def record(row: dict, name: str = "train_grid.jsonl") -> None:
        with (out / name).open("a") as f:
            f.write(json.dumps(row) + "\n")

    def mfu(seq: int, tps: float | None) -> dict:
        if not tps or not peak:
            return {"mfu": None, "mfu_lora": None}
        s = SHAPES[shape]
        return {"mfu": round(tps * palm_flops_per_token(s, seq) / (peak * 1e12), 4),
                "mfu_lora": round(tps * flops_per_token(s, args.rank, seq) / (peak * 1e12), 4)}

    def measure_bare(seq: int, mb: int) -> dict:
        try:
            res = run_bare(loaded, args, seq, mb)
            log(f"bare {shape} {method} {seq}x{mb}: {res['tokens_per_s']:.0f} tok/s")
            if "cpu_probe" in common:
                res["cpu_probe"] = common["cpu_probe"]
        except Exception as exc:  # the other points are still worth measuring
            res = {"error": f"{type(exc).__name__}: {exc}"[-1500:]}
            log(f"bare {shape} {method} {seq}x{mb} FAILED: {exc}")
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return res

    def measure_trainer(seq: int, mb: int) -> list[dict]:
        runs = [("trainer", "auto", mb, args.accum, "auto")]
        runs += [(f"trainer-{p}", p, mb, args.accum, "auto") for p in args.packings.split(",") if p and p != "auto"]
        runs += [(f"trainer-autocast-{a}", "auto", mb, args.accum, a) for a in args.autocasts.split(",")
                 if a and a != "auto"]
        if args.auto_compare:
            runs += [("mb2x4", "auto", 2, 4, "auto"), ("mb-auto", "auto", "auto", 4, "auto")]
        rows = []
        for kind, packing, m, accum, autocast in runs:
            # every run from the adapter as loaded, so their losses step by step compare
            loaded.model.load_state_dict(initial, strict=False)
            name = f"grid-{shape}-{method}-{seq}x{mb}-{kind}"
            row = dict(common, kind=kind, seq=seq, micro_batch=m, accum=accum, packing_requested=packing,
                       autocast_requested=autocast)
            try:
                res = run_trainer(loaded, args, base_config(args, shape, method, seq, m, accum, packing, name,
                                                            autocast))
                row.update(res, **mfu(seq, res["tokens_per_s"]))
                log(f"{kind} {shape} {method} {seq}x{m}: {res['tokens_per_s']:.0f} tok/s")
            except Exception as exc:
                row["error"] = f"{type(exc).__name__}: {exc}"[-2000:]
                log(f"{kind} {shape} {method} {seq}x{m} FAILED: {exc}")
            rows.append(row)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        return rows

    def with_bare(row: dict, b: dict) -> dict:
        kind = row["kind"]
        if "error" not in row and (kind == "trainer" or kind.startswith("trainer-")):
            row["bare_tokens_per_s"] = b.get("tokens_per_s")
            row["bare_peak_alloc_gib"] = b.get("peak_alloc_gib")
            row["bare_step_s"] = b.get("step_s")
            row["bare_error"] = b.get("error")
            row["bare_autocast"] = b.get("autocast")
            row.update({f"bare_{k}": v for k, v in mfu(row["seq"], b.get("tokens_per_s")).items()})
            row["bare_step_s_all"] = b.get("step_s_all")
            if b.get("cpu_probe"):
                row["bare_cpu_probe"] = b["cpu_probe"]
            gc_keys = ("gc_collections", "gc_full", "gc_full_ms", "gc_total_ms")
            row.update({f"bare_{k}": b[k] for k in gc_keys if k in b})
            row["ratio"] = (row["tokens_per_s"] / b["tokens_per_s"]) if b.get("tokens_per_s") else None
            row["ratio_median"] = median_ratio(row.get("step_s_all"), b.get("step_s_all"), args.warmup)
            row["anchor_check"] = anchor_check(row.get("peak_alloc_gib"), b.get("peak_alloc_gib"))
            if row["ratio"]:
                log(f"{kind} {shape} {method} {row['seq']}x{row['micro_batch']}: {row['ratio']:.3f}x bare"
                    + ("" if row["anchor_check"] == "ok" else f" ({row['anchor_check']})"))
        return row

    if args.layout == "paired":
        for seq, mb in points:
            name = f"grid-{shape}-{method}-{seq}x{mb}-paired"
            row = dict(common, kind="trainer", seq=seq, micro_batch=mb, accum=args.accum, packing_requested="auto",
                       autocast_requested="auto")
            try:
                res = run_paired(loaded, args, base_config(args, shape, method, seq, mb, args.accum, "auto", name),
                                 seq, mb)
                row.update(res["trainer"], **mfu(seq, res["trainer"]["tokens_per_s"]))
                record(with_bare(row, res["bare"]))
            except Exception as exc:
                row["error"] = f"{type(exc).__name__}: {exc}"[-2000:]
                log(f"paired {shape} {method} {seq}x{mb} FAILED: {exc}")
                record(row)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        return 0
    initial = {k: v.detach().clone() for k, v in loaded.model.state_dict().items() if "lora_" in k}
    part = bare_part(args, shape, method, args.repeat)
    if args.side == "trainer":  # --layout split: the bare child of this repeat left its points here
        bare = read_bare_part(part, points)
    else:  # every bare point first, on the model exactly as loaded (see the module docstring)
        bare = {}
        for seq, mb in points:
            bare[(seq, mb)] = measure_bare(seq, mb)
            if args.side == "bare":  # point by point: a child cut short still hands over what it measured
                part.write_text(json.dumps({f"{q}x{m}": res for (q, m), res in bare.items()}))
        if args.side == "bare":
            return 0
    for seq, mb in points:
        for row in measure_trainer(seq, mb):
            record(with_bare(row, bare[(seq, mb)]))
    return 0


def bare_part(args, shape: str, method: str, repeat: int) -> Path:
    """Where the bare child of a split layout leaves its points for the trainer child of its repeat."""
    return Path(args.work) / f"bare-{args.call}-{shape}-{method}-{repeat}.json"


def read_bare_part(part: Path, points: list[tuple[int, int]]) -> dict:
    missing = {"error": f"no bare loop result in {part.name}: its child failed or ran out of time"}
    try:
        found = json.loads(part.read_text())
    except (OSError, ValueError):
        found = {}
    return {(seq, mb): found.get(f"{seq}x{mb}", missing) for seq, mb in points}


# ------------------------------------------------------------------------------------ main
def point_name(r: dict) -> str:
    return f"{r['shape']} {r['method']} {r['seq']}x{r['micro_batch']}"


def summarise(rows: list[dict], call: str) -> dict:
    """The call's worst point. A point measured in several children (--repeats) counts with the
    median of their ratios, and its lowest and highest ratio are kept beside it."""
    import statistics

    mine = [r for r in rows if r.get("call") == call and "error" not in r]
    measured = [r for r in mine if r.get("kind") == "trainer" and r.get("ratio")]
    comparable = [r for r in measured if r.get("anchor_check", "ok") == "ok"]
    by_point: dict[str, list[dict]] = {}
    for r in comparable:
        by_point.setdefault(point_name(r), []).append(r)
    summary = {"setup": "summary", "call": call, "points": len(by_point), "date": time.strftime("%Y-%m-%d %H:%M")}
    not_comparable = sorted({point_name(r) for r in measured if r.get("anchor_check", "ok") != "ok"})
    if not_comparable:
        summary["not_comparable"] = not_comparable
    if by_point:
        ratio = {k: statistics.median(r["ratio"] for r in v) for k, v in by_point.items()}
        worst = min(ratio, key=ratio.get)
        summary.update(worst_ratio=round(ratio[worst], 4), worst_point=worst, device=by_point[worst][0]["device"])
        if len(by_point[worst]) > 1:
            summary["worst_point_repeats"] = sorted(round(r["ratio"], 4) for r in by_point[worst])
        summary["targets"] = {"trainer_vs_bare>=0.95": ratio[worst] >= 0.95}
        # the median trainer against the median bare loop over the repeats: each side's process speed
        # varies on its own, so pairing the n-th trainer with the n-th bare loop adds both noises
        pooled = {k: statistics.median(r["tokens_per_s"] for r in v) / statistics.median(
            r["bare_tokens_per_s"] for r in v) for k, v in by_point.items()
            if all(r.get("tokens_per_s") and r.get("bare_tokens_per_s") for r in v)}
        if pooled:
            low = min(pooled, key=pooled.get)
            summary.update(worst_ratio_pooled=round(pooled[low], 4), worst_point_pooled=low)
        medians = {k: statistics.median(r["ratio_median"] for r in v) for k, v in by_point.items()
                   if all(r.get("ratio_median") for r in v)}
        if medians:
            low = min(medians, key=medians.get)
            summary.update(worst_ratio_median=round(medians[low], 4), worst_point_median=low)
    pairs = {}
    for r in mine:
        if r.get("kind") in ("mb2x4", "mb-auto"):
            pairs.setdefault((r["shape"], r["method"], r["seq"]), {})[r["kind"]] = r["tokens_per_s"]
    speedups = {f"{s} {m} {q}": round(v["mb-auto"] / v["mb2x4"], 4) for (s, m, q), v in pairs.items()
                if v.get("mb-auto") and v.get("mb2x4")}
    if speedups:
        summary["auto_vs_2x4"] = speedups
        summary.setdefault("targets", {})["auto_vs_2x4>=1.15"] = min(speedups.values()) >= 1.15
    return summary


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shapes", default="0.6b,4b,8b,14b", help=f"Comma list of {sorted(SHAPES)}.")
    p.add_argument("--methods", default="lora,qlora", help="Comma list of lora (16-bit) and qlora.")
    p.add_argument("--seqs", default=DEFAULT_SEQS, help="Comma list of SEQxMICRO_BATCH points.")
    p.add_argument("--steps", type=int, default=8, help="Optimizer steps per measurement.")
    p.add_argument("--warmup", type=int, default=3, help="Steps left out of the timing (compile, autotune).")
    p.add_argument("--accum", type=int, default=2, help="Gradient accumulation of the grid points.")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--backend", default="unsloth", choices=BACKENDS)
    p.add_argument("--packings", default="auto", help="train.packing modes per point (auto always runs).")
    p.add_argument("--autocasts", default="auto",
                   help="train.autocast values per point (auto always runs): e.g. on, the trainer with "
                        "Unsloth's own bf16 autocast beside auto's choice, with every step's loss recorded.")
    p.add_argument("--auto-compare", action="store_true",
                   help="Also micro_batch 2 x accum 4 vs micro_batch auto x accum 4 at each point's length.")
    p.add_argument("--weights", default="random", choices=("random", "sparse"),
                   help="random: bf16 checkpoints with random weights (written to --work; 28 GB for 14B). "
                        "sparse: zero weights in sparse files (no disk, instant), same shapes.")
    p.add_argument("--bare-autocast", default="auto", choices=("auto", "on", "off"),
                   help="bf16 autocast in the bare loop; auto: off, on where the model's dtypes need it.")
    p.add_argument("--work", default="/tmp/qwentune-bench", help="Scratch folder (models, data, runs).")
    p.add_argument("--out", default=str(ROOT / "bench" / "results"), help="Folder of train_grid.jsonl.")
    p.add_argument("--call", default="", help="A label stored with every row (e.g. the call number).")
    p.add_argument("--child-timeout", type=int, default=560)
    p.add_argument("--repeats", type=int, default=1,
                   help="Fresh child processes per (shape, method), each loading the model, timing the bare "
                        "loop and the trainer; the summary takes each point's median ratio over them.")
    p.add_argument("--layout", default="split", choices=LAYOUTS,
                   help="split: the bare loop and the trainer each in a fresh process (the trainer as "
                        "`python -m core train` runs); shared: both on one load, the bare loop first; "
                        "paired: one fresh process, a bare step right after every trainer step (both "
                        "meet the same CPU speed; see PairedSteps).")
    p.add_argument("--cpus", default="",
                   help="Pin every child to these CPUs (e.g. 0-7), the same set for the bare loop and the "
                        "trainer; fastest:N: before each child, probe every CPU (bench/cpu_probe.py) and pin "
                        "the child to the N that run Python fastest at that moment; empty: the scheduler's "
                        "choice.")
    p.add_argument("--cpu-probe", default="", help=argparse.SUPPRESS)  # internal: the parent's probe, JSON
    p.add_argument("--child", help=argparse.SUPPRESS)  # internal: shape:method in this process
    p.add_argument("--side", default="both", choices=("both", "bare", "trainer"),
                   help=argparse.SUPPRESS)  # internal: what the child measures
    p.add_argument("--repeat", type=int, default=0, help=argparse.SUPPRESS)  # internal: which repeat
    args = p.parse_args(argv)
    if args.warmup < 1 or args.steps <= args.warmup:
        raise SystemExit("--steps must exceed --warmup, and --warmup be at least 1")
    if args.repeats < 1:
        raise SystemExit("--repeats must be at least 1")
    if args.cpus.startswith("fastest:"):
        n = args.cpus.partition(":")[2]
        if not n.isdigit() or not 1 <= int(n) <= len(os.sched_getaffinity(0)):
            raise SystemExit(f"--cpus {args.cpus}: expected fastest:N with N from 1 to "
                             f"{len(os.sched_getaffinity(0))} (the CPUs this process may run on)")
    elif args.cpus:
        try:
            wanted = set(parse_cpus(args.cpus))
        except ValueError:
            raise SystemExit(f"--cpus: expected a list such as 0-7 or 0,2,4, got {args.cpus!r}") from None
        if not wanted or not wanted <= os.sched_getaffinity(0):
            raise SystemExit(f"--cpus {args.cpus}: this process may run on {sorted(os.sched_getaffinity(0))}")
    args.call = args.call or time.strftime("%Y%m%d-%H%M%S")
    if args.child:
        return child(args)

    from transformers import AutoTokenizer

    shapes = [s for s in args.shapes.split(",") if s]
    methods = [m for m in args.methods.split(",") if m]
    unknown = [s for s in shapes if s not in SHAPES] + [m for m in methods if m not in ("lora", "qlora")]
    if unknown:
        raise SystemExit(f"unknown shape or method: {unknown}")
    points = parse_seqs(args.seqs)
    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    most_mb = max([mb for _, mb in points] + ([8] if args.auto_compare else []))
    rows_needed = args.steps * max(args.accum, 4 if args.auto_compare else 1) * most_mb + 8
    for shape in shapes:
        t = time.time()
        if args.weights == "sparse":
            from vram_sweep import build_shape

            build_shape(SPARSE_KEYS[shape], work)
        else:
            build_model(shape, model_dir(args, shape))
        log(f"model {shape} ready ({time.time() - t:.0f}s)")
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the children get the whole card
    tok = AutoTokenizer.from_pretrained(model_dir(args, shapes[0]))
    for seq, _ in points:
        build_uniform(mix_path(work, seq), tok, seq, rows_needed, seed=seq)
    # repeats round the (shape, method) list, so a drift of the machine over the call spreads over
    # every point instead of landing on one
    for repeat in range(args.repeats):
        for shape in shapes:
            for method in methods:
                cmd = [sys.executable, __file__, "--child", f"{shape}:{method}", f"--repeat={repeat}"] + [
                    f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
                    if k not in ("child", "auto_compare", "repeat", "side", "cpus", "cpu_probe") and v is not None]
                cmd += ["--auto-compare"] if args.auto_compare else []
                t = time.time()
                # a call label used again in the same --work: a bare child that dies before its first
                # point must not leave the trainer child an earlier call's figures
                bare_part(args, shape, method, repeat).unlink(missing_ok=True)
                for side in ("bare", "trainer") if args.layout == "split" else ("both",):
                    try:
                        proc = subprocess.run(cmd + [f"--side={side}"] + pin_args(args), cwd=ROOT,
                                              timeout=args.child_timeout)
                        if proc.returncode != 0:
                            log(f"{shape} {method} {side}: child exited {proc.returncode}")
                    except subprocess.TimeoutExpired:
                        log(f"{shape} {method} {side}: gave up after {args.child_timeout}s "
                            "(its measured points are kept)")
                log(f"{shape} {method} (repeat {repeat + 1} of {args.repeats}) took {time.time() - t:.0f}s")
    rows = [json.loads(x) for x in (out / "train_grid.jsonl").read_text().splitlines() if x.strip()] \
        if (out / "train_grid.jsonl").exists() else []
    summary = summarise(rows, args.call)
    with (out / "train_grid.jsonl").open("a") as f:
        f.write(json.dumps(summary) + "\n")
    print("\n| shape | method | seq x mb | trainer tok/s | bare tok/s | ratio | median-step ratio "
          "| peak GiB (trainer / bare) | MFU |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        if r.get("call") != args.call or r.get("kind") != "trainer":
            continue
        if "error" in r:
            print(f"| {r['shape']} | {r['method']} | {r['seq']}x{r['micro_batch']} | FAILED | | | | | |")
            continue
        ratio = f"{r['ratio']:.3f}" if r.get("ratio") else "-"
        mfu = f"{r['mfu']:.1%}" if r.get("mfu") else "-"
        rep = f" (repeat {r.get('repeat', 0) + 1})" if args.repeats > 1 else ""
        print(f"| {r['shape']} | {r['method']} | {r['seq']}x{r['micro_batch']}{rep} | {r['tokens_per_s']:.0f} | "
              f"{r.get('bare_tokens_per_s') or 0:.0f} | {ratio} | {r.get('ratio_median') or '-'} | "
              f"{r.get('peak_alloc_gib') or 0:.2f} / "
              f"{r.get('bare_peak_alloc_gib') or 0:.2f} | {mfu} |")
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
