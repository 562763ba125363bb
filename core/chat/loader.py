"""What the chat panes and the evaluation can load, and the cache that keeps one of them in memory.

:func:`resolve_target` reads what the user gave, without loading anything or touching the network:

* a finished run folder (``runs/<name>``): its base model (config.yaml) + ``adapter/``; while the
  run is still going, the adapter of its newest checkpoint;
* a checkpoint of a run (``runs/<name>/checkpoints/checkpoint-N``): the run's base + that adapter;
* any PEFT adapter folder: the base named in ``adapter_config.json`` (or ``ChatConfig.base_model``);
* a local model folder (e.g. a merged export): compared against a base model when one is known
  (``ChatConfig.base_model``, the run it was exported from) - loaded as a second model only when the
  estimator says both fit - otherwise shown alone in the base pane;
* a catalog key, a hub id (downloaded through core.models; offline gives a clear message) or ``demo``.

:func:`load_engine` then loads it into a :class:`~core.chat.engine.ChatEngine`; :class:`ModelCache`
keeps the loaded engine keyed by what was loaded, so a page reload or a second tab finds it again.
"""

from __future__ import annotations

import gc
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path

from core.config import ChatConfig
from core.settings import ConfigError

RUN_CONFIG = "config.yaml"
ADAPTER_CONFIG = "adapter_config.json"
EXPORT_MARKER = "qwentune_export.json"  # written by core.train.export: {"run": ..., "format": ...}
KINDS = ("run", "checkpoint", "adapter", "merged", "model")


class LoadError(ConfigError):
    """Something cannot be loaded; the message says what and what to do instead."""

    kind = "model"


@dataclass
class LoadSpec:
    """What to load for the two panes (nothing loaded yet)."""

    kind: str  # run | checkpoint | adapter | merged | model
    target: str  # what the user gave
    label: str  # short name for people
    base: str  # base model: demo, catalog key, hub id or folder
    adapter: str | None = None  # PEFT adapter folder: the fine-tuned pane
    tuned: str | None = None  # a second (merged) model folder: the fine-tuned pane
    method: str = "lora"  # how the base was trained: lora | qlora
    run_dir: str | None = None
    base_path: str | None = None  # the exact local folder the run trained on, when known
    notes: list[str] = field(default_factory=list)

    @property
    def has_tuned(self) -> bool:
        return bool(self.adapter or self.tuned)

    def to_json(self) -> dict:
        return asdict(self)


def _read_json(path: Path) -> dict:
    from core.settings import DamagedFile, read_json

    try:
        return read_json(path, expect=dict) or {}
    except DamagedFile as exc:
        raise LoadError(f"unreadable JSON ({exc.message})", "", str(path)) from None


def is_run_dir(path: Path) -> bool:
    """A run folder (the rule is core.runfolder's)."""
    from core.runfolder import RunFolder

    return RunFolder(path).is_run()


def _checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoints that hold an adapter, oldest first."""
    from core.runfolder import RunFolder

    return [c.path for c in RunFolder(run_dir).checkpoints(with_adapter=True)]


def list_targets(runs_dir: str | Path) -> list[dict]:
    """Runs and their checkpoints that have an adapter, newest run first: the chat selector's rows.

    Each row: {"label", "path", "kind", "run"}, in core.train.runs.list_runs's order."""
    root = Path(runs_dir)
    if not root.is_dir():
        return []
    from core.train.runs import list_runs

    runs = [Path(r["path"]) for r in list_runs(root)]
    rows = []
    for run in runs:
        ckpts = _checkpoints(run)
        if (run / "adapter" / ADAPTER_CONFIG).is_file():
            rows.append({"label": run.name, "path": str(run), "kind": "run", "run": run.name})
        elif ckpts:
            rows.append({"label": f"{run.name} (in progress: {ckpts[-1].name})", "path": str(run),
                         "kind": "run", "run": run.name})
        for ck in reversed(ckpts):
            rows.append({"label": f"{run.name} / {ck.name}", "path": str(ck), "kind": "checkpoint",
                         "run": run.name})
    return rows


def _run_base(run_dir: Path) -> tuple[str, str, str | None]:
    """(name_or_path, method, exact local base folder or None) of a run."""
    from core.config import load_run_config
    from core.runfolder import RunFolder
    from core.train.runs import recorded_base

    cfg = load_run_config(RunFolder(run_dir).config)
    base_path, method = recorded_base(run_dir)
    return cfg.model.name_or_path, method or cfg.model.method, base_path


def _enclosing_run(path: Path, levels: int = 3) -> Path | None:
    from core.runfolder import RunFolder

    run = RunFolder.enclosing(path.parent, levels - 1) if path.parent != path else None
    return run.path if run else None


def resolve_target(target: str, cfg: ChatConfig | None = None, *, runs_dir: str | Path | None = None) -> LoadSpec:
    """Work out what ``target`` means (see the module docstring). Loads nothing."""
    cfg = cfg or ChatConfig()
    text = (target or "").strip()
    if not text:
        raise LoadError("choose a run, a checkpoint, a model folder or a hub id to load", "run")
    path = Path(text).expanduser()
    if not path.exists() and runs_dir is not None and (Path(runs_dir) / text).is_dir():
        path = Path(runs_dir) / text
    base_override = cfg.base_model.strip()
    if path.is_dir():
        path = path.resolve()
        if (path / RUN_CONFIG).is_file():
            return _resolve_run(path, base_override)
        if (path / ADAPTER_CONFIG).is_file():
            return _resolve_adapter(path, base_override)
        if (path / "config.json").is_file():
            return _resolve_model_folder(path, base_override)
        raise LoadError("this folder is not a run (no config.yaml), an adapter (no adapter_config.json) "
                        "or a model (no config.json)", "run", str(path))
    if path.is_absolute() or text.startswith((".", "~")) or (text.count("/") != 1 and "/" in text):
        raise LoadError("no such folder", "run", text)
    # demo, a catalog key or a hub id: one model, no fine-tuned pane.
    spec = LoadSpec(kind="model", target=text, label=text, base=text)
    if base_override:
        spec = LoadSpec(kind="merged", target=text, label=text, base=base_override, tuned=text)
    return spec


def _resolve_run(run_dir: Path, base_override: str) -> LoadSpec:
    base, method, base_path = _run_base(run_dir)
    if base_override:
        base, base_path = base_override, None
    adapter = run_dir / "adapter"
    notes = []
    if not (adapter / ADAPTER_CONFIG).is_file():
        ckpts = _checkpoints(run_dir)
        if not ckpts:
            raise LoadError("this run has no adapter yet: it saves one at its first checkpoint and when "
                            "it ends", "run", str(run_dir))
        adapter = ckpts[-1]
        notes.append(f"the run has not finished: using its newest checkpoint, {adapter.name}")
    return LoadSpec(kind="run", target=str(run_dir), label=run_dir.name, base=base, adapter=str(adapter),
                    method=method, run_dir=str(run_dir), base_path=base_path, notes=notes)


def _resolve_adapter(path: Path, base_override: str) -> LoadSpec:
    run = _enclosing_run(path)
    if run is not None:
        base, method, base_path = _run_base(run)
        kind, label = "checkpoint", f"{run.name} / {path.name}"
        if path == run / "adapter":
            kind, label = "run", run.name
    else:
        acfg = _read_json(path / ADAPTER_CONFIG)
        base, method, base_path = acfg.get("base_model_name_or_path") or "", "lora", None
        kind, label = "adapter", path.name
    if base_override:
        base, base_path = base_override, None
    if not base:
        raise LoadError("the adapter does not name its base model (base_model_name_or_path); give one "
                        "with base_model", "base_model", str(path / ADAPTER_CONFIG))
    return LoadSpec(kind=kind, target=str(path), label=label, base=base, adapter=str(path), method=method,
                    run_dir=str(run) if run else None, base_path=base_path)


def _resolve_model_folder(path: Path, base_override: str) -> LoadSpec:
    base, method, base_path, run = base_override, "lora", None, None
    marker = _read_json(path / EXPORT_MARKER) if (path / EXPORT_MARKER).is_file() else {}
    if not base and marker.get("base_model"):
        base = str(marker["base_model"])
    if not base:
        # An export names the run it came from; an export inside a run folder belongs to that run.
        marked = Path(str(marker.get("run") or "")).expanduser() if marker.get("run") else None
        run = marked if marked is not None and (marked / RUN_CONFIG).is_file() else _enclosing_run(path)
        if run is not None:
            base, method, base_path = _run_base(run)
    if not base:
        return LoadSpec(kind="model", target=str(path), label=path.name, base=str(path),
                        notes=["no base model to compare with: set base_model to see the base pane beside it"])
    return LoadSpec(kind="merged", target=str(path), label=path.name, base=base, tuned=str(path),
                    method=method, run_dir=str(run) if run else None, base_path=base_path)


# ------------------------------------------------------------------------------------------ loading
def _local_model_path(name: str, *, method: str, quant: str = "auto") -> str:
    """A local folder for a model name (demo / folder / catalog key / hub id), downloading if needed."""
    from core.demo import ensure_demo_model, is_demo

    if is_demo(name):
        return str(ensure_demo_model())
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path.resolve())
    from core.models.resolve import resolve_model

    return resolve_model(name, method=method, quant=quant)


def pick_device(cfg: ChatConfig) -> str:
    import torch

    if cfg.device == "cuda":
        if not torch.cuda.is_available():
            raise LoadError("device is cuda but no CUDA GPU is usable here", "device")
        return "cuda"
    if cfg.device == "cpu":
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


def pick_dtype(cfg: ChatConfig, device: str):
    import torch

    if cfg.dtype != "auto":
        return getattr(torch, cfg.dtype)
    if device == "cpu":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _is_prequantized(folder: str) -> bool:
    cfg = _read_json(Path(folder) / "config.json")
    return bool(cfg.get("quantization_config"))


def load_model(folder: str, *, device: str, dtype, load_in_4bit: bool = False):
    """A causal LM from a local folder, on ``device``, for inference."""
    from transformers import AutoModelForCausalLM

    kwargs: dict = {"dtype": dtype}
    prequant = _is_prequantized(folder)
    if device == "cuda":
        kwargs["device_map"] = {"": 0}
        if load_in_4bit and not prequant:
            from transformers import BitsAndBytesConfig

            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=dtype)
    elif prequant:
        raise LoadError("this checkpoint is stored in 4-bit (bitsandbytes), which needs an NVIDIA GPU; on "
                        "the CPU use the original 16-bit model", "base_model", folder)
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
    except OSError as exc:
        raise LoadError(f"cannot load the model: {exc}", "base_model", folder) from exc
    model.eval()
    return model


def load_tokenizer(*folders: str | None):
    """The tokenizer of the first folder that has one (a run's adapter may carry its own template)."""
    from transformers import AutoTokenizer

    for folder in folders:
        if folder and (Path(folder) / "tokenizer_config.json").is_file():
            return AutoTokenizer.from_pretrained(folder)
    raise LoadError("no tokenizer found (tokenizer_config.json) in " + ", ".join(f for f in folders if f),
                    "base_model")


def _gib_free(device: str) -> float:
    if device == "cuda":
        import torch

        free, _total = torch.cuda.mem_get_info()
        return free / 2**30
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("inf")  # unknown: let the load itself fail loudly if it must


def _weights_gib(folder: str) -> float:
    return sum(p.stat().st_size for p in Path(folder).glob("*.safetensors")) / 2**30 or \
        sum(p.stat().st_size for p in Path(folder).glob("*.bin")) / 2**30


def second_model_need_gib(folder: str, *, device: str, dtype, load_in_4bit: bool,
                          context_len: int = 4096) -> float:
    """Memory a second model needs: the estimator on the GPU; the weights at ``dtype`` on the CPU."""
    if device == "cuda":
        from core.gpu_queue import inference_need_gib

        need = inference_need_gib(folder, method="qlora" if load_in_4bit else "lora", context_len=context_len)
        if need is not None:
            return need
    import torch

    stored = _weights_gib(folder)
    cfg = _read_json(Path(folder) / "config.json")
    stored_bytes = {"float32": 4, "bfloat16": 2, "float16": 2}.get(str(cfg.get("torch_dtype") or
                                                                     cfg.get("dtype") or "bfloat16"), 2)
    return stored * torch.tensor([], dtype=dtype).element_size() / stored_bytes


# ------------------------------------------------------------------------------- the GPU queue
def _adapter_rank(adapter: str | None) -> int:
    if not adapter:
        return 0
    r = _read_json(Path(adapter) / ADAPTER_CONFIG).get("r")
    return r if isinstance(r, int) and not isinstance(r, bool) and r > 0 else 0


def _estimate_source(name: str, *, four_bit: bool) -> str:
    """What the estimator can read for ``name``: its local folder when it is on disk already (a hub
    id outside the catalog is only known from its config.json), else the name itself."""
    if not name or Path(name).expanduser().is_dir():
        return name
    try:
        from core.models import local_path_for

        return local_path_for(name, method="qlora" if four_bit else "lora",
                              quant="auto" if four_bit else "none") or name
    except (ImportError, ConfigError):
        return name  # an unknown name: the estimate says "unknown" and the queue tells why


def gpu_work_args(spec: LoadSpec, cfg: ChatConfig) -> dict:
    """What core.gpu_queue.may_start_gpu_work needs to judge loading ``spec`` (no loading, no
    network): the base model, 4-bit or 16-bit (as :func:`load_engine` decides), the adapter's rank
    and the device asked for."""
    four_bit = cfg.quant == "4bit" or (cfg.quant == "auto" and spec.method == "qlora")
    return {"model": spec.base_path or _estimate_source(spec.base, four_bit=four_bit),
            "method": "qlora" if four_bit else "lora", "adapter_rank": _adapter_rank(spec.adapter),
            "device": "cpu" if cfg.device == "cpu" else "auto"}


def engine_gpu_args(engine) -> dict:
    """:func:`gpu_work_args` for an engine already loaded (before its next generation)."""
    info = engine.info
    return {"model": info.get("base_path") or info.get("base") or "",
            "method": "qlora" if info.get("four_bit") else "lora", "adapter_rank": _adapter_rank(info.get("adapter")),
            "device": "cpu" if info.get("device") == "cpu" else "auto"}


def resident_gib() -> float:
    """GiB this process holds on the GPU now (a loaded chat model): counted once by the GPU queue."""
    import torch

    return torch.cuda.memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0


def load_engine(spec: LoadSpec | str, cfg: ChatConfig | None = None, *, runs_dir: str | Path | None = None,
                gpu_check: bool = True):
    """Load ``spec`` (or a target string) into a ChatEngine: one base model + the adapter, or a base
    model and a merged model when both fit."""
    from core.chat.engine import ChatEngine

    cfg = cfg or ChatConfig()
    if isinstance(spec, str):
        spec = resolve_target(spec, cfg, runs_dir=runs_dir)
    device = pick_device(cfg)
    dtype = pick_dtype(cfg, device)
    four_bit = device == "cuda" and (cfg.quant == "4bit" or (cfg.quant == "auto" and spec.method == "qlora"))
    notes = list(spec.notes)
    if cfg.quant == "4bit" and device != "cuda":
        notes.append("4-bit weights need an NVIDIA GPU: loaded in full precision on the CPU")
    base_path = spec.base_path
    if base_path and not four_bit and _is_prequantized(base_path):
        base_path = None  # the run trained on a 4-bit checkpoint; 16-bit was asked for: use the original
    if not base_path:
        base_path = _local_model_path(spec.base, method="qlora" if four_bit else "lora",
                                      quant="auto" if four_bit else "none")
    tuned_path = _local_model_path(spec.tuned, method="lora", quant="none") if spec.tuned else None
    if device == "cuda" and gpu_check and runs_dir is not None:
        from core.gpu_queue import may_start_gpu_work

        decision = may_start_gpu_work("chat", runs_dir=runs_dir, model=base_path,
                                      method="qlora" if four_bit else "lora")
        if not decision.allowed:
            raise LoadError(decision.message(), "run")
    model = load_model(base_path, device=device, dtype=dtype, load_in_4bit=four_bit)
    tuned_model = None
    try:
        if spec.adapter:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, spec.adapter, is_trainable=False)
        elif tuned_path:
            need = second_model_need_gib(tuned_path, device=device, dtype=dtype, load_in_4bit=four_bit)
            free = _gib_free(device)
            if need > free * 0.95:
                raise LoadError(
                    f"the merged model needs about {need:.1f} GiB beside the base model, but only {free:.1f} "
                    "GiB is free. Load the run's adapter instead (the same fine-tune, one model in memory), "
                    "or load the merged model alone without base_model.", "base_model", spec.tuned)
            tuned_model = load_model(tuned_path, device=device, dtype=dtype, load_in_4bit=four_bit)
        tokenizer = load_tokenizer(spec.adapter, tuned_path, base_path)
    except BaseException:
        del model, tuned_model
        free_memory()
        raise
    info = {"kind": spec.kind, "label": spec.label, "target": spec.target, "base": spec.base,
            "base_path": base_path, "adapter": spec.adapter, "tuned": tuned_path, "device": device,
            "dtype": str(dtype).replace("torch.", ""), "four_bit": four_bit, "run_dir": spec.run_dir,
            "notes": notes}
    return ChatEngine(model, tokenizer, tuned_model=tuned_model, info=info)


def free_memory() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


class ModelCache:
    """The loaded engine, kept server-side and keyed by what was loaded (target + load settings).

    It holds one engine at a time: loading another one first frees the old one, so two models never
    compete for GPU memory. Loading is serialised; a second request for the same key waits for the
    first and then shares its engine."""

    def __init__(self):
        self._lock = threading.Lock()
        self._key: tuple | None = None
        self._engine = None

    @staticmethod
    def key(spec: LoadSpec, cfg: ChatConfig) -> tuple:
        return (spec.kind, spec.target, spec.base, spec.adapter, spec.tuned, cfg.device, cfg.dtype, cfg.quant)

    def get(self, key: tuple | None):
        """The engine loaded under ``key``, or None."""
        with self._lock:
            return self._engine if key is not None and key == self._key else None

    @property
    def current(self):
        return self._engine

    @property
    def current_key(self) -> tuple | None:
        return self._key

    def resident_gib(self) -> float:
        """GiB the loaded engine holds on the GPU (0 with none loaded). The GPU queue counts it once:
        it is in use already, and a load in its place frees it first."""
        return resident_gib() if self._engine is not None else 0.0

    def load(self, spec: LoadSpec, cfg: ChatConfig, *, runs_dir: str | Path | None = None, loader=None):
        """The engine for ``spec``, loading it (and dropping any other) when needed."""
        key = self.key(spec, cfg)
        with self._lock:
            if key == self._key and self._engine is not None:
                return self._engine
            self._engine, self._key = None, None
            free_memory()
            engine = (loader or load_engine)(spec, cfg, runs_dir=runs_dir)
            self._engine, self._key = engine, key
            return engine

    def unload(self) -> None:
        with self._lock:
            self._engine, self._key = None, None
            free_memory()
