"""Model folders on this machine: checking one, and listing all of them.

:func:`check_model_dir` reads only small files (config.json, the weight index, each safetensors
header), so checking a 60 GB model takes milliseconds. It reports every problem at once, each naming
the file that is wrong.

The list holds: the demo model, every download in the models folder, folders the user added
(``python -m core models add PATH``, kept in ``<cache root>/local_models.json``), and Qwen3 models
already in Hugging Face's or ModelScope's own caches.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from core.models.errors import InvalidModelFolder, ModelError
from core.models.paths import DEMO_MARKER, MARKER, cache_root, models_dir, registry_path

QWEN3_TYPES = {"qwen3": "Qwen3ForCausalLM", "qwen3_moe": "Qwen3MoeForCausalLM"}
# Near misses get a sentence of their own: they are what users most often pick by mistake.
NEAR_MISSES = {
    "qwen2": "Qwen2 / Qwen2.5, not Qwen3",
    "qwen2_moe": "Qwen2-MoE, not Qwen3",
    "qwen3_next": "Qwen3-Next, a different architecture that QwenTune does not train yet",
    "qwen3_vl": "Qwen3-VL, a vision-language model",
    "qwen3_vl_moe": "Qwen3-VL, a vision-language model",
    "qwen2_5_vl": "Qwen2.5-VL, a vision-language model",
}
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
SINGLE_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


@dataclass
class ModelCheck:
    """What a folder holds and whether QwenTune can train it. ``problems`` empty means usable."""

    path: str
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    model_type: str = ""
    architecture: str = ""
    layers: int = 0
    hidden: int = 0
    experts: int = 0
    params: int = 0  # estimated from config.json's shape
    params_b: float = 0.0
    quantized_4bit: bool = False
    quant_method: str = ""  # "" | "bnb-4bit" | "unsloth-dynamic-4bit" | another method's name
    weights: str = ""  # "safetensors" | "bin"
    shards: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def is_moe(self) -> bool:
        return self.experts > 0


@dataclass
class LocalModel:
    """One row of the local-models list."""

    name: str  # what to put in model.name_or_path ("demo", or the folder path)
    label: str  # short text for people (repo id, folder name)
    path: str
    source: str  # demo | download | added | hf-cache | modelscope-cache
    hub: str = ""
    repo_id: str = ""
    complete: bool = True  # False: a download that has not finished (it resumes)
    size_bytes: int = 0
    check: ModelCheck | None = None

    @property
    def ok(self) -> bool:
        return self.complete and (self.check is None or self.check.ok)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["ok"] = self.ok
        if self.check is not None:
            out["check"]["ok"] = self.check.ok
        return out


# --------------------------------------------------------------------------------------- checks
def _read_json(path: Path, what: str, problems: list[str]):
    """``path``'s JSON, or None with the reason added to ``problems`` (the folder check lists every
    problem of a folder at once rather than stopping at the first)."""
    from core.settings import DamagedFile, read_json

    try:
        data = read_json(path)
    except DamagedFile as exc:
        problems.append(f"{what} is {exc.message}")
        return None
    except OSError as exc:
        problems.append(f"{what} cannot be read ({exc.strerror or exc})")
        return None
    if data is None:
        problems.append(f"{what} is missing")
    return data


def _safetensors_problem(path: Path) -> str | None:
    """None if the file's header parses and the file is as long as the header says."""
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                return f"{path.name} is empty or truncated ({size} bytes)"
            (n,) = struct.unpack("<Q", head)
            if n > 100_000_000 or n + 8 > size:
                return f"{path.name} is truncated or not a safetensors file"
            header = json.loads(fh.read(n))
    except OSError as exc:
        return f"{path.name} cannot be read ({exc.strerror or exc})"
    except (json.JSONDecodeError, UnicodeDecodeError):
        return f"{path.name} has a corrupted header"
    ends = [int(v["data_offsets"][1]) for k, v in header.items()
            if k != "__metadata__" and isinstance(v, dict) and "data_offsets" in v]
    expected = 8 + n + (max(ends) if ends else 0)
    if size < expected:
        return (f"{path.name} is truncated ({_gb(size)} of {_gb(expected)}); the download did not finish "
                f"- download again to resume")
    return None


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def _check_weights(folder: Path, check: ModelCheck) -> None:
    problems = check.problems
    for index_name in WEIGHT_INDEXES:
        index_path = folder / index_name
        if not index_path.is_file():
            continue
        index = _read_json(index_path, index_name, problems)
        if index is None:
            return
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            problems.append(f"{index_name} has no weight_map")
            return
        shards = sorted(set(map(str, weight_map.values())))
        missing = [s for s in shards if not (folder / s).is_file()]
        check.shards = len(shards)
        check.weights = "safetensors" if index_name.startswith("model.safetensors") else "bin"
        if missing:
            listed = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
            problems.append(f"weights incomplete: {listed} listed in {index_name} "
                            f"{'is' if len(missing) == 1 else 'are'} missing ({len(shards) - len(missing)} "
                            f"of {len(shards)} shards present); download again to resume")
        for shard in shards:
            if shard not in missing and shard.endswith(".safetensors"):
                problem = _safetensors_problem(folder / shard)
                if problem:
                    problems.append(problem)
        return
    for name in SINGLE_WEIGHTS:
        if (folder / name).is_file():
            check.weights = "safetensors" if name.endswith("safetensors") else "bin"
            check.shards = 1
            if check.weights == "safetensors":
                problem = _safetensors_problem(folder / name)
                if problem:
                    problems.append(problem)
            return
    loose = sorted(p.name for p in folder.glob("*.safetensors"))
    if loose:
        problems.append(f"weights found ({', '.join(loose[:3])}) but no model.safetensors.index.json that "
                        f"lists them")
        return
    problems.append("no weights: expected model.safetensors, or model-0000X-of-0000N.safetensors shards "
                    "with model.safetensors.index.json (or pytorch_model.bin)")


def _check_tokenizer(folder: Path, check: ModelCheck) -> None:
    has_json = (folder / "tokenizer.json").is_file()
    has_bpe = (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()
    if not (has_json or has_bpe):
        check.problems.append("tokenizer files are missing: expected tokenizer.json (or vocab.json + "
                              "merges.txt)")
    elif has_json:
        try:
            with (folder / "tokenizer.json").open("rb") as fh:
                first = fh.read(1).strip()
            if first != b"{":
                check.problems.append("tokenizer.json is not valid JSON (corrupted?)")
        except OSError as exc:
            check.problems.append(f"tokenizer.json cannot be read ({exc.strerror or exc})")
    tok_config = folder / "tokenizer_config.json"
    has_template = (folder / "chat_template.jinja").is_file()
    if tok_config.is_file():
        data = _read_json(tok_config, "tokenizer_config.json", check.problems)
        has_template = has_template or bool(isinstance(data, dict) and data.get("chat_template"))
    else:
        check.warnings.append("tokenizer_config.json is missing; special tokens fall back to defaults")
    if not has_template:
        check.warnings.append("no chat template in the folder; QwenTune's Qwen3 template will be used")


def _quant_info(config: dict, check: ModelCheck) -> None:
    q = config.get("quantization_config")
    if not isinstance(q, dict):
        return
    method = str(q.get("quant_method") or "").lower()
    if method == "bitsandbytes" and (q.get("load_in_4bit") or q.get("_load_in_4bit")):
        check.quantized_4bit = True
        # Unsloth's dynamic checkpoints keep the most sensitive layers in 16-bit.
        skip = q.get("llm_int8_skip_modules") or []
        check.quant_method = "unsloth-dynamic-4bit" if any("." in str(s) for s in skip) else "bnb-4bit"
        return
    check.quant_method = method or "unknown"
    if method == "bitsandbytes":
        check.problems.append("quantized to 8-bit (bitsandbytes); QwenTune trains from 16-bit or 4-bit "
                              "weights - use the original repository")
    else:
        check.problems.append(f"quantized with {method or 'an unknown method'}; QwenTune trains from 16-bit "
                              "or bitsandbytes 4-bit weights - use the original or an unsloth -bnb-4bit "
                              "repository")


def check_model_dir(path: str | os.PathLike) -> ModelCheck:
    """Everything wrong with a model folder (``problems``) and what it is (arch, params, 4-bit)."""
    folder = Path(path).expanduser()
    check = ModelCheck(path=str(folder))
    if not folder.exists():
        check.problems.append("folder not found")
        return check
    if not folder.is_dir():
        check.problems.append("not a folder")
        return check
    config_path = folder / "config.json"
    if not config_path.is_file():
        adapter = folder / "adapter_config.json"
        if adapter.is_file():
            data = _read_json(adapter, "adapter_config.json", [])
            base = data.get("base_model_name_or_path") if isinstance(data, dict) else None
            check.problems.append(f"this is a LoRA adapter (base model: {base or 'unknown'}), not a base "
                                  f"model: choose its base model, and load the adapter from its run")
        else:
            check.problems.append("config.json is missing (is this a Hugging Face model folder?)")
        _check_weights(folder, check)
        _check_tokenizer(folder, check)
        return check
    config = _read_json(config_path, "config.json", check.problems)
    if config is not None and not isinstance(config, dict):
        check.problems.append("config.json does not hold a JSON object")
        config = None
    if config is not None:
        _check_config(config, check)
    _check_weights(folder, check)
    _check_tokenizer(folder, check)
    return check


def _check_config(config: dict, check: ModelCheck) -> None:
    text_config = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
    model_type = str(config.get("model_type") or "")
    check.model_type = model_type
    archs = config.get("architectures") or []
    check.architecture = str(archs[0]) if isinstance(archs, list) and archs else ""
    if not model_type:
        check.problems.append("config.json has no model_type")
    elif model_type not in QWEN3_TYPES:
        what = NEAR_MISSES.get(model_type, f"model_type {model_type!r}")
        check.problems.append(f"not a Qwen3 model: config.json says {what} (model_type {model_type!r}); "
                              f"QwenTune fine-tunes Qwen3 causal LMs (model_type 'qwen3' or 'qwen3_moe')")
    elif isinstance(archs, list) and archs and QWEN3_TYPES[model_type] not in archs:
        check.problems.append(f"not a causal LM: config.json architectures is {archs}, expected "
                              f"{QWEN3_TYPES[model_type]}")
    _quant_info(config, check)
    from core.hardware.catalog import Arch, param_count
    from core.settings import ConfigError

    try:
        arch = Arch.from_hf_config(config if not text_config or "hidden_size" in config else text_config)
    except ConfigError as exc:
        if model_type in QWEN3_TYPES:
            check.problems.append(exc.reason)
        return
    check.layers, check.hidden, check.experts = arch.layers, arch.hidden, arch.experts
    check.params = param_count(arch)
    check.params_b = round(check.params / 1e9, 3)


# --------------------------------------------------------------------------------------- sizes
def dir_size(folder: Path) -> int:
    """Bytes of every file under ``folder`` (symlinks followed once, as in HF's cache)."""
    total = 0
    stack = [folder]
    while stack:
        current = stack.pop()
        try:
            with os.scandir(current) as it:
                for entry in it:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(Path(entry.path))
                        elif entry.is_file():
                            total += entry.stat().st_size
                    except OSError:
                        continue  # a file vanished while we looked; sizes are informational
        except OSError:
            continue
    return total


# ------------------------------------------------------------------------------------- registry
def read_registry(path: Path | None = None) -> list[dict]:
    path = path or registry_path()
    from core.settings import DamagedFile, read_json

    try:
        data = read_json(path, expect=dict)
    except DamagedFile as exc:
        raise ModelError(f"{path} is unreadable ({exc.message}); "
                         "fix or delete it (it only lists added folders)") from None
    except OSError as exc:
        raise ModelError(f"{path} cannot be read ({exc.strerror or exc})") from None
    if data is None:
        return []
    folders = data.get("folders")
    if not isinstance(folders, list):
        raise ModelError(f"{path}: expected {{\"folders\": [...]}}; fix or delete it")
    return [f for f in folders if isinstance(f, dict) and f.get("path")]


def add_local_model(path: str | os.PathLike, *, force: bool = False, registry: Path | None = None) -> ModelCheck:
    """Remember a model folder so it shows in the list. Refuses a broken folder unless ``force``."""
    folder = Path(path).expanduser().resolve()
    check = check_model_dir(folder)
    if not folder.is_dir():
        raise ModelError(f"model folder not found: {folder}")
    if not check.ok and not force:
        raise InvalidModelFolder(str(folder), check.problems)
    from core.settings import write_json_atomic

    registry = registry or registry_path()
    folders = [f for f in read_registry(registry) if Path(f["path"]) != folder]
    folders.append({"path": str(folder), "added": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    write_json_atomic(registry, {"folders": folders})
    return check


def remove_local_model(path: str | os.PathLike, *, registry: Path | None = None) -> bool:
    """Forget an added folder (its files stay). True if it was listed."""
    folder = Path(path).expanduser().resolve()
    registry = registry or registry_path()
    folders = read_registry(registry)
    kept = [f for f in folders if Path(f["path"]).expanduser().resolve() != folder]
    if len(kept) == len(folders):
        return False
    from core.settings import write_json_atomic

    write_json_atomic(registry, {"folders": kept})
    return True


# ------------------------------------------------------------------------------ the hubs' caches
def hf_cache_root() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    hf_home = os.environ.get("HF_HOME")
    return (Path(hf_home).expanduser() if hf_home else Path.home() / ".cache" / "huggingface") / "hub"


def _hf_snapshot_of(repo_folder: Path) -> Path | None:
    snaps = repo_folder / "snapshots"
    ref = repo_folder / "refs" / "main"
    if ref.is_file():
        try:
            snap = snaps / ref.read_text(encoding="utf-8").strip()
        except OSError:
            snap = None
        if snap is not None and snap.is_dir():
            return snap
    try:
        candidates = [p for p in snaps.iterdir() if p.is_dir()]
    except OSError:
        return None
    return max(candidates, key=lambda p: p.stat().st_mtime) if candidates else None


def hf_cache_snapshot(repo_id: str) -> Path | None:
    """The snapshot folder of ``repo_id`` in Hugging Face's own cache, if it holds a config.json."""
    owner, name = repo_id.split("/", 1)
    snap = _hf_snapshot_of(hf_cache_root() / f"models--{owner}--{name}")
    return snap if snap is not None and (snap / "config.json").is_file() else None


def _hf_cache_models() -> list[tuple[str, Path]]:
    root = hf_cache_root()
    out = []
    try:
        entries = sorted(root.iterdir())
    except OSError:
        return out
    for repo_folder in entries:
        if not repo_folder.name.startswith("models--") or "qwen3" not in repo_folder.name.lower():
            continue
        repo_id = repo_folder.name[len("models--"):].replace("--", "/", 1)
        snap = _hf_snapshot_of(repo_folder)
        if snap is not None and (snap / "config.json").is_file():
            out.append((repo_id, snap))
    return out


def modelscope_cache_root() -> Path:
    env = os.environ.get("MODELSCOPE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "modelscope"


def _snapshot_or_self(folder: Path) -> Path | None:
    """``folder`` itself, or its newest ``snapshots/<revision>`` (ModelScope >= 1.38, like HF)."""
    if (folder / "config.json").is_file():
        return folder
    snap = _hf_snapshot_of(folder)
    return snap if snap is not None and (snap / "config.json").is_file() else None


def _modelscope_candidates(root: Path, owner: str, name: str) -> list[Path]:
    legacy = name.replace(".", "___")  # ModelScope <= 1.37 wrote dots in names as ___
    return [root / "models" / f"{owner}--{name}", root / "hub" / "models" / owner / legacy,
            root / "models" / owner / legacy, root / "hub" / owner / legacy, root / owner / name]


def modelscope_cache_snapshot(repo_id: str) -> Path | None:
    """The folder of ``repo_id`` in ModelScope's own cache (any of its layouts), if complete enough
    to hold a config.json."""
    owner, name = repo_id.split("/", 1)
    for candidate in _modelscope_candidates(modelscope_cache_root(), owner, name):
        if candidate.is_dir():
            found = _snapshot_or_self(candidate)
            if found is not None:
                return found
    return None


def _modelscope_cache_models() -> list[tuple[str, Path]]:
    """Qwen3 folders in ModelScope's cache, whose layout changed over versions."""
    root = modelscope_cache_root()
    out = []

    def children(folder: Path) -> list[Path]:
        try:
            return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        except OSError:
            return []

    for repo in children(root / "models"):
        if "--" in repo.name and "qwen3" in repo.name.lower():
            found = _snapshot_or_self(repo)
            if found is not None:
                out.append((repo.name.replace("--", "/", 1), found))
    for base in (root / "hub" / "models", root / "models", root / "hub", root):
        for owner in children(base):
            for repo in children(owner):
                if "qwen3" in repo.name.lower() and (repo / "config.json").is_file():
                    out.append((f"{owner.name}/{repo.name.replace('___', '.')}", repo))
    return out


# ------------------------------------------------------------------------------------ the list
def _download_folders(root: Path) -> list[tuple[str, str, Path]]:
    out = []
    for hub in ("hf", "modelscope"):
        hub_dir = root / hub
        if not hub_dir.is_dir():
            continue
        for owner in sorted(p for p in hub_dir.iterdir() if p.is_dir()):
            for repo in sorted(p for p in owner.iterdir() if p.is_dir()):
                out.append((hub, f"{owner.name}/{repo.name}", repo))
    return out


def _marker(folder: Path) -> dict | None:
    """The finished-download marker, or None: the download is not known to be complete. The download
    writes the marker atomically after the last file, so one that cannot be read back means the
    folder is not a finished download either; it is listed as incomplete and downloading again
    rewrites the marker."""
    from core.settings import DamagedFile, read_json

    try:
        return read_json(folder / MARKER, expect=dict)
    except (DamagedFile, OSError):
        return None


def list_local_models(*, cache_dir: str | os.PathLike | None = None, registry: Path | None = None,
                      include_demo: bool = True, include_hub_caches: bool = True,
                      check: bool = True) -> list[LocalModel]:
    """Every model folder present. ``check=False`` skips validation and sizes (for a quick list)."""
    models: list[LocalModel] = []
    seen: set[str] = set()

    def add(model: LocalModel) -> None:
        key = os.path.realpath(model.path)
        if key in seen:
            return
        seen.add(key)
        folder = Path(model.path)
        if check and folder.is_dir():
            model.check = check_model_dir(folder)
            model.size_bytes = model.size_bytes or dir_size(folder)
        models.append(model)

    if include_demo:
        from core.demo import recipe_hash

        demo = cache_root() / f"demo-model-{recipe_hash()}"
        built = (demo / DEMO_MARKER).is_file()
        add(LocalModel(name="demo", label="demo (tiny offline Qwen3, random weights)", path=str(demo),
                       source="demo", complete=built))
    for hub, repo_id, folder in _download_folders(models_dir(cache_dir)):
        marker = _marker(folder)
        add(LocalModel(name=str(folder), label=repo_id, path=str(folder), source="download", hub=hub,
                       repo_id=repo_id, complete=marker is not None))
    for entry in read_registry(registry):
        folder = Path(entry["path"]).expanduser()
        add(LocalModel(name=str(folder), label=entry.get("name") or folder.name, path=str(folder),
                       source="added"))
    if include_hub_caches:
        for repo_id, folder in _hf_cache_models():
            add(LocalModel(name=str(folder), label=repo_id, path=str(folder), source="hf-cache", hub="hf",
                           repo_id=repo_id))
        for repo_id, folder in _modelscope_cache_models():
            add(LocalModel(name=str(folder), label=repo_id, path=str(folder), source="modelscope-cache",
                           hub="modelscope", repo_id=repo_id))
    return models


def status_text(model: LocalModel) -> str:
    """One line for people: ok, still downloading, or the first problem."""
    if model.source == "demo" and not model.complete:
        return "built on first use (a few seconds)"
    if not Path(model.path).is_dir():
        return "folder not found"
    if not model.complete:
        return "download not finished (download again to resume)"
    if model.check is not None and model.check.problems:
        extra = f" (+{len(model.check.problems) - 1} more)" if len(model.check.problems) > 1 else ""
        return model.check.problems[0] + extra
    return "ok"
