"""Training presets: RunConfig YAML files in presets/train/, listed, loaded into and saved from the GUI.

A preset is the same YAML `python -m core train` reads. It usually says *how* to train (model,
method, LoRA, optimisation) and leaves *what* to train on to the user, so its ``data`` section may
be left out; everything else is checked exactly as a run config is (unknown keys, types, bounds,
with file and line). The GUI moves settings around as flat ``{"lora.r": 16, ...}`` dicts keyed by
the dotted paths of :func:`core.settings.field_info`.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from core.config import RunConfig
from core.settings import ConfigError, field_info, from_dict, read_yaml, to_dict, write_atomic

PRESETS_DIR = Path(__file__).resolve().parent.parent / "presets" / "train"
# Run-specific settings: a preset never carries them (a loaded preset must not rename the next run).
RUN_ONLY = ("name", "runs_dir")
# Stand-in while validating a preset without a data section; never written or returned.
_NO_DATA = "\0preset-without-data"
NAME_RE = re.compile(r"^\w[\w.-]{0,79}$")


@dataclass(frozen=True)
class PresetInfo:
    name: str
    path: Path
    description: str  # the file's leading comment block, without '#'


def setting_paths() -> list[str]:
    """Dotted paths of every RunConfig setting a preset may hold."""
    return [info.path for info in field_info(RunConfig) if info.path not in RUN_ONLY]


def _description(path: Path) -> str:
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    return "\n".join(lines).strip()


def list_presets(root: str | Path | None = None) -> list[PresetInfo]:
    """Every *.yaml in the presets folder, sorted by name (broken files too: loading says why)."""
    folder = Path(root) if root else PRESETS_DIR
    if not folder.is_dir():
        return []
    return [PresetInfo(p.stem, p, _description(p)) for p in sorted(folder.glob("*.yaml"))]


def resolve(name_or_path: str | Path, root: str | Path | None = None) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") and p.exists():
        return p
    folder = Path(root) if root else PRESETS_DIR
    candidate = folder / f"{name_or_path}.yaml"
    if not candidate.exists():
        known = ", ".join(info.name for info in list_presets(folder)) or "none"
        raise ConfigError(f"no preset named {str(name_or_path)!r} (known: {known})", "", str(folder))
    return candidate


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """A config dataclass as {dotted path: value}, nested sections expanded."""
    import copy
    import typing

    out: dict[str, Any] = {}
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        path = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(hints[f.name]):  # a section: expanded, as field_info does
            out.update(flatten(value, path + "."))
        elif dataclasses.is_dataclass(value):  # an optional nested config (data.mix) is one setting
            out[path] = to_dict(value)
        else:
            out[path] = copy.deepcopy(value)
    return out


def unflatten(values: dict[str, Any]) -> dict:
    out: dict = {}
    for path, value in values.items():
        node = out
        *parents, leaf = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def _validate(data: dict, source: str = "", lines: dict[str, int] | None = None) -> RunConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping of settings, got {type(data).__name__}", "", source)
    has_data = bool(data.get("data"))
    if not has_data:
        data = {**data, "data": {"mix_dir": _NO_DATA}}
    return from_dict(RunConfig, data, source=source, lines=lines)


def load_preset(name_or_path: str | Path, root: str | Path | None = None) -> dict[str, Any]:
    """The preset's settings as {dotted path: value}, every setting present (defaults filled in),
    except the run name and folder and the data settings the preset leaves empty.
    Raises ConfigError naming the file, line and field when something is wrong."""
    path = resolve(name_or_path, root)
    raw, lines = read_yaml(path)
    if raw is None:
        raise ConfigError("the preset is empty", "", str(path))
    cfg = _validate(raw, str(path), lines)
    values = flatten(cfg)
    for key in RUN_ONLY:
        values.pop(key, None)
    if values.get("data.mix_dir") == _NO_DATA:
        values = {k: v for k, v in values.items() if not k.startswith("data.")}
    # A preset names a mix folder or an inline mix; the unused one must not blank the other's widget.
    return {k: v for k, v in values.items() if not (k.startswith("data.") and v in (None, ""))}


def preset_to_yaml(values: dict[str, Any], header: str = "") -> str:
    """Validate flat GUI values as a RunConfig and render the preset file's text."""
    import yaml

    values = {k: v for k, v in values.items() if k not in RUN_ONLY}
    if not values.get("data.mix_dir") and values.get("data.mix") is None:
        values = {k: v for k, v in values.items() if not k.startswith("data.")}
    cfg = _validate(unflatten(values))
    data = to_dict(cfg)
    for key in RUN_ONLY:
        data.pop(key, None)
    if data["data"]["mix_dir"] == _NO_DATA:
        data.pop("data")
    else:
        data["data"] = {k: v for k, v in data["data"].items() if v not in (None, "")}
    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    if header:
        text = "".join(f"# {line}".rstrip() + "\n" for line in header.splitlines()) + text
    return text


def save_preset(name: str, values: dict[str, Any], root: str | Path | None = None, *,
                overwrite: bool = False, description: str = "") -> Path:
    """Write ``values`` (flat, as the GUI holds them) as presets/train/<name>.yaml.

    Checks the name (letters, digits, '_', '-', '.'; no folders), validates every value as a
    RunConfig would, and refuses to replace an existing preset unless ``overwrite``."""
    name = (name or "").strip()
    if name.endswith((".yaml", ".yml")):
        name = name.rsplit(".", 1)[0]
    if not NAME_RE.match(name):
        raise ConfigError("a preset name uses letters, digits, '_', '-' or '.', up to 80 characters, "
                          f"got {name!r}", "name")
    folder = Path(root) if root else PRESETS_DIR
    path = folder / f"{name}.yaml"
    if path.exists() and not overwrite:
        raise FileExistsError(f"preset {name!r} exists ({path}); choose another name or allow overwriting")
    stamp = datetime.now().strftime("%Y-%m-%d %H:%M")
    header = (description.strip() + "\n" if description.strip() else "") + (
        f"Saved from the QwenTune GUI on {stamp}.\n"
        f"Use it: load it in the GUI (Presets), or `python -m core train {path.as_posix()}`"
        + ("" if values.get("data.mix_dir") else " --data.mix-dir MIX_FOLDER") + ".")
    text = preset_to_yaml(values, header)
    write_atomic(path, text)
    return path
