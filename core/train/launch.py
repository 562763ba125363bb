"""How a run's training processes are started: one process (``single``) or one per GPU (``ddp``,
``fsdp``) through accelerate's launcher, never a home-made process spawner.

    single     python -m core train RUN_DIR            (the worker trains in this one process)
    ddp, fsdp  python -m core train RUN_DIR            (the launcher parent: claim, GPU lock, status)
                 -> python -m accelerate.commands.launch --config_file RUN_DIR/accelerate.yaml
                      -m core train RUN_DIR [--resume]  (one rank per GPU, started by torchrun)

The parent holds what belongs to the run once (the name claim, the GPU lock, the failure
reserve, train.log) and records a failure the ranks could not record themselves (a rank killed
with -9 takes the others down through torchrun; the parent then marks the run failed and
resumable). Rank 0 writes status.json, metrics.jsonl and the adapter; the other ranks write
nothing in the run folder except what the Trainer itself saves into a checkpoint.

``train.gpus`` is resolved against the GPUs this process can see: ``auto`` (every GPU for ddp /
fsdp, the first for single), a count (``2``: the first two) or a list of ids (``0,1``; one id
alone is written ``1,``), as nvidia-smi numbers them (or as the ids within CUDA_VISIBLE_DEVICES
when that is already set).

Testing without a GPU: ``QWENTUNE_CPU_RANKS=N`` (N >= 2) runs a ddp / fsdp run as N CPU processes
through the same launcher (gloo instead of NCCL). It is for tests and demos, not for real training.

This module imports nothing heavy; torch is not needed to plan a launch.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from core.settings import ConfigError

CPU_RANKS_ENV = "QWENTUNE_CPU_RANKS"
# Set by the launcher parent for its ranks: its pid (the run's owner). A rank sees its launcher die
# through it and ends too, so no rank keeps training for a run nobody owns.
LAUNCHER_ENV = "QWENTUNE_LAUNCHER_PID"
# A folder of the launcher parent's (outside the run folder) where a failing rank other than 0 says
# how it failed, for the parent to record.
REPORTS_ENV = "QWENTUNE_RANK_REPORTS"
ACCELERATE_CONFIG = "accelerate.yaml"
# How a rank's failure begins when it only saw another rank of the run end (core.train.ranks).
PEER_LOST = "another process of this"
MULTI = ("ddp", "fsdp")
# Decoder layer classes FSDP wraps one by one (each layer's weights gathered only while it runs).
DECODER_LAYERS = {"qwen3": "Qwen3DecoderLayer", "qwen3_moe": "Qwen3MoeDecoderLayer",
                  "qwen2": "Qwen2DecoderLayer", "qwen2_moe": "Qwen2MoeDecoderLayer", "llama": "LlamaDecoderLayer"}


@dataclass(frozen=True)
class Plan:
    """How a run is started: its strategy, the GPU ids it holds, its number of processes."""

    strategy: str  # single | ddp | fsdp
    gpus: tuple[int, ...]  # GPU ids as this machine numbers them (empty on the CPU)
    world_size: int  # processes (one per GPU; QWENTUNE_CPU_RANKS on the CPU)
    cpu: bool = False  # ranks on the CPU (gloo), the testing path

    @property
    def multi(self) -> bool:
        return self.strategy in MULTI

    def visible_devices(self) -> str | None:
        """CUDA_VISIBLE_DEVICES for the training processes (None: leave the environment alone)."""
        if self.cpu or not self.gpus:
            return None
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if visible and visible.strip():  # ids count within what the user already made visible
            names = [v.strip() for v in visible.split(",") if v.strip()]
            return ",".join(names[i] for i in self.gpus)
        return ",".join(str(i) for i in self.gpus)


@dataclass(frozen=True)
class RankInfo:
    """This process is one rank of a ddp / fsdp run (the environment torchrun and the parent set)."""

    rank: int
    local_rank: int
    world_size: int
    launcher_pid: int

    @property
    def main(self) -> bool:
        return self.rank == 0


def rank_info() -> RankInfo | None:
    """This process's rank, or None when it is not a rank of a run the launcher started."""
    pid = os.environ.get(LAUNCHER_ENV, "")
    rank = os.environ.get("RANK", "")
    if not (pid.isdigit() and rank.isdigit()):
        return None
    return RankInfo(rank=int(rank), local_rank=int(os.environ.get("LOCAL_RANK") or 0),
                    world_size=int(os.environ.get("WORLD_SIZE") or 1), launcher_pid=int(pid))


def writes_run_folder() -> bool:
    """False in a rank other than 0: rank 0 (or the single worker) writes the run folder."""
    info = rank_info()
    return info is None or info.main


# ------------------------------------------------------------------------------------ the GPUs
def visible_gpu_count(ask_torch: bool = True) -> int:
    """GPUs this process may use: CUDA_VISIBLE_DEVICES when set, else what NVML counts (torch's
    count as a fallback when ``ask_torch``: importing torch takes seconds, which a single-GPU start
    from the web server need not spend). Never initialises CUDA in this process."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        names = [v.strip() for v in visible.split(",") if v.strip()]
        if not names or names[0] in ("-1", "NoDevFiles"):
            return 0
        return len(names)
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return int(pynvml.nvmlDeviceGetCount())
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no driver, no NVML: ask torch (which finds none on a CPU machine)
        if not ask_torch:
            return 0
        try:
            import torch

            return torch.cuda.device_count()
        except Exception:
            return 0


def cpu_ranks() -> int:
    """QWENTUNE_CPU_RANKS as a number of CPU processes (0 when unset)."""
    text = os.environ.get(CPU_RANKS_ENV, "").strip()
    if not text:
        return 0
    if not text.isdigit() or int(text) < 2:
        raise ConfigError(f"{CPU_RANKS_ENV} must be a whole number >= 2, got {text!r}", CPU_RANKS_ENV)
    return int(text)


def parse_gpus(spec) -> tuple[str, object]:
    """("auto", None) | ("count", n) | ("ids", [ids]) for a train.gpus value."""
    text = str(spec if spec is not None else "auto").strip().lower().strip("[]")
    if text in ("", "auto"):
        return "auto", None
    if "," not in text:
        if not text.isdigit() or int(text) < 1:
            raise ConfigError(f"expected auto, a count (2) or a list of GPU ids (0,1), got {spec!r}",
                              "train.gpus")
        return "count", int(text)
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts or not all(p.isdigit() for p in parts):
        raise ConfigError(f"expected GPU ids separated by commas (0,1), got {spec!r}", "train.gpus")
    ids = [int(p) for p in parts]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"GPU ids repeat in {spec!r}; name each GPU once", "train.gpus")
    return "ids", ids


def resolve_gpus(spec, strategy: str, available: int) -> tuple[int, ...]:
    """The GPU ids ``train.gpus`` = spec picks out of ``available`` cards for ``strategy``."""
    kind, value = parse_gpus(spec)
    if kind == "auto":
        if not available:
            return ()
        return (0,) if strategy == "single" else tuple(range(available))
    seen = f"{available} GPU{'s' if available != 1 else ''} visible" if available else "no GPU visible"
    if kind == "count":
        if value > available:
            raise ConfigError(f"{value} GPUs asked for, but this machine has {seen}", "train.gpus")
        ids = tuple(range(value))
    else:
        missing = [i for i in value if i >= available]
        if missing:
            have = f" (ids 0-{available - 1})" if available else ""
            raise ConfigError(f"GPU id{'s' if len(missing) > 1 else ''} {', '.join(map(str, missing))} "
                              f"{'do' if len(missing) > 1 else 'does'} not exist: {seen}{have}", "train.gpus")
        ids = tuple(value)
    if strategy == "single" and len(ids) > 1:
        raise ConfigError(f"strategy single trains on one GPU, but {len(ids)} are chosen; choose one GPU, or "
                          "train.strategy ddp / fsdp to use them all", "train.gpus")
    return ids


def plan(cfg, available: int | None = None) -> Plan:
    """The launch plan of ``cfg`` on this machine. A bad train.gpus is a ConfigError naming it."""
    t = cfg.train
    strategy = t.strategy
    if strategy not in MULTI:
        ids = resolve_gpus(t.gpus, "single", visible_gpu_count(ask_torch=False) if available is None else available)
        return Plan("single", ids, 1)
    n_cpu = cpu_ranks()
    count = visible_gpu_count() if available is None else available
    if n_cpu and not count:
        kind, _ = parse_gpus(t.gpus)
        if kind == "ids":
            raise ConfigError(f"{CPU_RANKS_ENV} runs CPU processes; train.gpus must be auto or a count, "
                              f"not ids", "train.gpus")
        return Plan(strategy, (), n_cpu, cpu=True)
    if not count:
        raise ConfigError(f"strategy {strategy} needs CUDA GPUs and none is visible; use strategy single",
                          "train.strategy")
    ids = resolve_gpus(t.gpus, strategy, count)
    return Plan(strategy, ids, len(ids))


# ------------------------------------------------------------------------------ the command
def decoder_layer_class(model_path: str | os.PathLike | None) -> str:
    """The decoder layer class FSDP wraps, from the model's config.json (Qwen3's by default)."""
    import json

    if model_path:
        try:
            mtype = json.loads((Path(model_path) / "config.json").read_text(encoding="utf-8")).get("model_type")
        except (OSError, ValueError):
            mtype = None
        if mtype in DECODER_LAYERS:
            return DECODER_LAYERS[mtype]
    return DECODER_LAYERS["qwen3"]


def accelerate_config(p: Plan, *, mixed_precision: str = "no", layer_class: str = "Qwen3DecoderLayer",
                      port: int = 29500) -> dict:
    """accelerate's config file for the plan (what `accelerate config` would write)."""
    data = {
        "compute_environment": "LOCAL_MACHINE",
        "distributed_type": "FSDP" if p.strategy == "fsdp" else "MULTI_GPU",
        "num_machines": 1,
        "machine_rank": 0,
        "num_processes": p.world_size,
        "main_process_ip": "127.0.0.1",
        "main_process_port": port,
        "rdzv_backend": "static",
        "same_network": True,
        "mixed_precision": mixed_precision,
        "use_cpu": p.cpu,
        "downcast_bf16": "no",
        "debug": False,
    }
    if p.visible_devices() is not None:
        # accelerate sets the ranks' CUDA_VISIBLE_DEVICES from this: the GPUs as the machine numbers them
        data["gpu_ids"] = p.visible_devices()
    if p.strategy == "fsdp":
        data["fsdp_config"] = {
            "fsdp_version": 2,
            "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "fsdp_transformer_layer_cls_to_wrap": layer_class,
            # A LoRA adapter is small: the full state dict is gathered on rank 0 and saved as a plain
            # PEFT adapter (adapter_model.safetensors), which chat, eval and export read as usual.
            "fsdp_state_dict_type": "FULL_STATE_DICT",
            "fsdp_reshard_after_forward": True,
            "fsdp_offload_params": False,
            # Rank 0 reads the weights, the others start empty and receive their shards from it.
            "fsdp_cpu_ram_efficient_loading": True,
            "fsdp_activation_checkpointing": False,
            "fsdp_use_orig_params": True,
        }
    return data


def free_port() -> int:
    """A free TCP port on 127.0.0.1 for the ranks' rendezvous (two runs never share one)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_accelerate_config(run_dir: Path, p: Plan, *, mixed_precision: str = "no",
                            layer_class: str = "Qwen3DecoderLayer", port: int | None = None) -> Path:
    import yaml

    from core.settings import write_atomic

    data = accelerate_config(p, mixed_precision=mixed_precision, layer_class=layer_class,
                             port=port or free_port())
    path = Path(run_dir) / ACCELERATE_CONFIG
    header = ("# accelerate config of this run, written by QwenTune from train.strategy / train.gpus\n"
              "# (regenerated at every start; edits here are not kept).\n")
    write_atomic(path, header + yaml.safe_dump(data, sort_keys=False))
    return path


def rank_command(run_dir: Path, config_file: Path, *, resume: bool) -> list[str]:
    """The accelerate launch command that starts every rank of a run."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config_file),
            "-m", "core", "train", str(run_dir), *(["--resume"] if resume else [])]


def worker_command(run_dir: Path, *, resume: bool) -> list[str]:
    """What starts a run's worker, whatever its strategy: ``python -m core train RUN_DIR``. For ddp /
    fsdp this process is the launcher parent, which runs :func:`rank_command` (see the module)."""
    from core.procs import core_command

    return core_command(["train", str(run_dir), *(["--resume"] if resume else [])])


def rank_env(p: Plan, base: dict | None = None, reports: Path | None = None) -> dict:
    """The environment of the ranks: the parent's pid, the GPUs they may see, CPU settings when the
    ranks run on the CPU, and no job record (the parent's job is the run's)."""
    from core.procs import RECORD_ENV

    env = dict(os.environ if base is None else base)
    env[LAUNCHER_ENV] = str(os.getpid())
    env["QWENTUNE_LOG_REDIRECTED"] = "1"  # their output reaches train.log through the parent
    env["PYTHONUNBUFFERED"] = "1"
    env.pop(RECORD_ENV, None)
    if reports is not None:
        env[REPORTS_ENV] = str(reports)
    visible = p.visible_devices()
    if visible is not None:
        env["CUDA_VISIBLE_DEVICES"] = visible
    if p.cpu:
        env["ACCELERATE_USE_CPU"] = "true"
        env["CUDA_VISIBLE_DEVICES"] = ""
        # The CPU's cores shared out: without this each rank starts a thread per core and they fight.
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 2) // p.world_size)))
    return env


def select_gpus(p: Plan, spec) -> None:
    """Strategy single on a GPU chosen in train.gpus: make it this process's only GPU (before CUDA
    starts). ``auto`` leaves the environment as it is."""
    if p.strategy == "single" and p.gpus and parse_gpus(spec)[0] != "auto":
        os.environ["CUDA_VISIBLE_DEVICES"] = p.visible_devices()


def checkpoint_world_size(ckpt: Path) -> int:
    """How many processes wrote a checkpoint: the Trainer saves one RNG state per process
    (rng_state_<rank>.pth), or a single rng_state.pth for one process."""
    ranks = list(Path(ckpt).glob("rng_state_*.pth"))
    return len(ranks) if ranks else 1


def check_resume(run_dir: Path, p: Plan) -> None:
    """fsdp resumes on the number of processes that wrote its newest checkpoint (loading the
    optimizer state onto another number of shards hung in a CPU check); ddp resumes on any number."""
    from core.runfolder import RunFolder

    ckpt = RunFolder(run_dir).latest_checkpoint()
    if p.strategy != "fsdp" or ckpt is None:
        return
    wrote = checkpoint_world_size(ckpt.path)
    if wrote != p.world_size:
        raise ConfigError(f"an fsdp run resumes on as many GPUs as wrote its checkpoint: {ckpt.name} was "
                          f"written by {wrote} process{'es' if wrote > 1 else ''}, this start has "
                          f"{p.world_size}; set train.gpus to {wrote} (ddp resumes on any number)", "train.gpus")
