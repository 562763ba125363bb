"""The one mechanism every setting goes through: dataclass fields with help text.

A setting is declared once, as a dataclass field made with :func:`setting`. The same declaration
drives YAML loading (unknown keys and wrong types rejected with the field's dotted path and, when it
came from a file, the file and line), CLI flags (:func:`add_cli_flags`) and GUI widgets (the GUI
reads ``help``, ``choices``, ``suggest``, ``minimum`` and ``maximum`` from :func:`field_info`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from pathlib import Path
from typing import Any

from core.errors import QwenTuneError


class ConfigError(QwenTuneError, ValueError):
    """A setting is wrong. ``where`` is the dotted field path; ``source`` the file:line if known."""

    kind = "config"

    def __init__(self, message: str, where: str = "", source: str = "", *, advice: str = "",
                 kind: str | None = None):
        self.source = source
        super().__init__(message, advice, where, kind=kind)

    def _text(self) -> str:
        prefix = f"{self.source}: " if self.source else ""
        if self.where:
            prefix += f"{self.where}: "
        return prefix + (f"{self.message}\n{self.advice}" if self.advice else self.message)


class DamagedFile(QwenTuneError):
    """A file our own code wrote cannot be read back (not UTF-8, not JSON, or the wrong shape)."""

    kind = "run"


def read_tail(path: str | os.PathLike, max_bytes: int) -> tuple[bytes, bool]:
    """The last ``max_bytes`` of a file and whether the file was longer (then the first line of the
    tail is partial). Reads only the tail, so a long log costs the same as a short one; raises OSError
    as ``open`` does, leaving each caller its own policy for a missing file."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - max_bytes))
        return f.read(), size > max_bytes


def read_json(path: str | os.PathLike, *, expect: type | None = None) -> Any:
    """The one way to read a JSON file we wrote: missing -> None; damaged -> :class:`DamagedFile`
    naming the file and what is wrong (``expect``: the top-level type it must have, e.g. dict).

    Our writes are atomic (:func:`write_json_atomic`), so a damaged file is never a half-written
    one: the reader must say so rather than guess its content.
    """
    p = Path(path)
    try:
        raw = p.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise DamagedFile(f"not UTF-8 text (byte {exc.start})", where=str(p)) from None
    except json.JSONDecodeError as exc:
        raise DamagedFile(f"not valid JSON (line {exc.lineno} column {exc.colno}: {exc.msg})",
                          where=str(p)) from None
    except RecursionError:
        raise DamagedFile("JSON nested too deeply", where=str(p)) from None
    if expect is not None and not isinstance(data, expect):
        raise DamagedFile(f"expected a JSON {_json_name(expect)}, found a {_json_name(type(data))}",
                          where=str(p))
    return data


def _json_name(tp: type) -> str:
    return {dict: "object", list: "list", str: "string", int: "number", float: "number",
            bool: "true/false", type(None): "null"}.get(tp, tp.__name__)


def setting(default: Any = dataclasses.MISSING, *, help: str, choices: tuple | None = None,
            minimum: float | None = None, maximum: float | None = None,
            default_factory: Any = dataclasses.MISSING, cli: bool = True,
            suggest: tuple | None = None) -> Any:
    """Declare a setting. ``help`` is required: it is the single source of the setting's text.

    ``choices`` is the closed list of allowed values (checked on load). ``suggest`` is an open one:
    common values the GUI offers in a dropdown that also takes any other valid value typed in
    (nothing checks against it; the field's type and ``validate`` do).
    """
    meta = {"help": help, "choices": choices, "minimum": minimum, "maximum": maximum, "cli": cli,
            "suggest": suggest}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass(frozen=True)
class FieldInfo:
    name: str
    path: str
    type: Any
    default: Any
    help: str
    choices: tuple | None
    minimum: float | None
    maximum: float | None
    suggest: tuple | None = None


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def field_info(cls: type, prefix: str = "") -> list[FieldInfo]:
    """Flattened description of every leaf setting of ``cls`` (nested dataclasses expanded)."""
    out: list[FieldInfo] = []
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        path = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(tp):
            out.extend(field_info(tp, path + "."))
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        out.append(FieldInfo(f.name, path, tp, default, f.metadata.get("help", ""),
                             f.metadata.get("choices"), f.metadata.get("minimum"),
                             f.metadata.get("maximum"), f.metadata.get("suggest")))
    return out


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str, lines: dict[str, int], source: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and return it, converted where lossless."""
    def fail(msg: str) -> ConfigError:
        line = lines.get(where)
        src = f"{source}:{line}" if source and line else source
        return ConfigError(msg, where, src)

    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        others = [a for a in args if a is not type(None)]
        if len(others) == 1:
            # An optional setting: the one type's own error names the field inside (sources[0].ratio).
            return _coerce(value, others[0], where, lines, source)
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where, lines, source)
            except ConfigError as exc:
                errors.append(exc.reason)
        raise fail(f"expected {' or '.join(_type_name(a) for a in args)}, got {value!r}")
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise fail(f"must be one of {list(typing.get_args(tp))}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise fail(f"expected a mapping of {tp.__name__} settings, got {value!r}")
        return _from_dict(tp, value, where + ".", lines, source)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise fail(f"expected a list, got {value!r}")
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        return [_coerce(v, item_tp, f"{where}[{i}]", lines, source) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise fail(f"expected a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise fail(f"expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise fail(f"expected a whole number, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            if isinstance(value, str):
                try:
                    return float(value)  # YAML reads "2e-4" as a string
                except ValueError:
                    pass
            raise fail(f"expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return str(value)
            raise fail(f"expected text, got {value!r}")
        return value
    return value


def _check_bounds(obj: Any, where_prefix: str, lines: dict[str, int], source: str) -> None:
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        where = f"{where_prefix}{f.name}"
        line = lines.get(where)
        src = f"{source}:{line}" if source and line else source
        choices = f.metadata.get("choices")
        if choices and value is not None:
            items = value if isinstance(value, list) else [value]
            bad = [v for v in items if v not in choices]
            if bad:
                raise ConfigError(f"{bad[0]!r} is not one of {list(choices)}", where, src)
        lo, hi = f.metadata.get("minimum"), f.metadata.get("maximum")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if lo is not None and value < lo:
                raise ConfigError(f"must be at least {lo}, got {value}", where, src)
            if hi is not None and value > hi:
                raise ConfigError(f"must be at most {hi}, got {value}", where, src)


def _from_dict(cls: type, data: dict, prefix: str, lines: dict[str, int], source: str) -> Any:
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            where = f"{prefix}{key}"
            line = lines.get(where)
            src = f"{source}:{line}" if source and line else source
            close = [n for n in names if n.startswith(str(key)[:3])]
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"unknown setting{hint}; known: {sorted(names)}", where, src)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            kwargs[f.name] = _coerce(data[f.name], hints[f.name], prefix + f.name, lines, source)
        elif dataclasses.is_dataclass(hints[f.name]):
            # A section left out still gets its defaults checked (its validate() runs).
            kwargs[f.name] = _from_dict(hints[f.name], {}, prefix + f.name + ".", lines, source)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            line = lines.get(prefix.rstrip("."))
            src = f"{source}:{line}" if source and line else source
            raise ConfigError("required setting is missing", prefix + f.name, src)
    obj = cls(**kwargs)
    _check_bounds(obj, prefix, lines, source)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        try:
            validate()
        except ConfigError as exc:
            if exc.source or not source:
                raise
            where = exc.where if exc.where.startswith(prefix) or not prefix else prefix + exc.where
            line = lines.get(where) or lines.get(prefix.rstrip("."))
            raise ConfigError(exc.reason, where, f"{source}:{line}" if line else source) from None
    return obj


def from_dict(cls: type, data: dict | None, *, source: str = "", lines: dict[str, int] | None = None):
    """Build ``cls`` from plain data; errors name the field's dotted path (and file:line)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping of settings, got {type(data).__name__}", "", source)
    return _from_dict(cls, data, "", lines or {}, source)


def to_dict(obj: Any) -> dict:
    return dataclasses.asdict(obj)


def _yaml_lines(text: str) -> dict[str, int]:
    """Map dotted key paths to 1-based line numbers, so errors can point into the file."""
    import yaml

    lines: dict[str, int] = {}

    def walk(node: Any, path: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                key = key_node.value
                p = f"{path}.{key}" if path else str(key)
                lines[p] = key_node.start_mark.line + 1
                walk(value_node, p)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                p = f"{path}[{i}]"
                lines[p] = item.start_mark.line + 1
                walk(item, p)

    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return lines
    if root is not None:
        walk(root, "")
    return lines


def read_yaml(path: str | os.PathLike) -> tuple[Any, dict[str, int]]:
    """Parse a YAML file; a syntax error becomes a ConfigError naming the file and line."""
    import yaml

    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("file not found", "", str(p)) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not valid UTF-8 text ({exc.reason} at byte {exc.start})", "", str(p)) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        src = f"{p}:{mark.line + 1}" if mark else str(p)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"invalid YAML: {problem}", "", src) from None
    return data, _yaml_lines(text)


def load_yaml(cls: type, path: str | os.PathLike):
    data, lines = read_yaml(path)
    return from_dict(cls, data, source=str(path), lines=lines)


def dump_yaml(obj: Any, path: str | os.PathLike | None = None, header: str = "") -> str:
    import yaml

    text = yaml.safe_dump(to_dict(obj), sort_keys=False, allow_unicode=True)
    if header:
        text = "".join(f"# {line}\n" for line in header.splitlines()) + text
    if path is not None:
        write_atomic(path, text)
    return text


def write_atomic(path: str | os.PathLike, text: str) -> None:
    """Write through a temp file and rename, so readers never see a half-written file."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, p)


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    write_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def add_cli_flags(parser: Any, cls: type, prefix: str = "") -> None:
    """Add ``--a.b`` style flags for every leaf setting; values override the YAML (see apply_cli)."""
    for info in field_info(cls, prefix):
        flag = "--" + info.path.replace("_", "-")
        kwargs: dict[str, Any] = {"dest": "set__" + info.path.replace(".", "__"), "default": None,
                                  # argparse formats help with %: a literal one ("10% left") is doubled
                                  "help": f"{info.help} (default: {info.default!r})".replace("%", "%%")}
        if info.choices and typing.get_origin(info.type) is not list:
            kwargs["choices"] = list(info.choices)
        if info.type is bool:
            kwargs["type"] = _parse_bool
            kwargs["metavar"] = "true|false"
        parser.add_argument(flag, **kwargs)


def _parse_bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def cli_overrides(args: Any) -> dict:
    """Collect ``--a.b`` flags given on the command line as a nested dict of overrides."""
    import yaml

    out: dict = {}
    for key, value in vars(args).items():
        if not key.startswith("set__") or value is None:
            continue
        parts = key[5:].split("__")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        if isinstance(value, str):
            try:
                value = yaml.safe_load(value)  # "16" -> 16, "[q_proj, v_proj]" -> list
            except yaml.YAMLError:
                pass
        node[parts[-1]] = value
    return out


def split_overrides(args: Any, first: type, second: type) -> tuple[Any, Any]:
    """Build two flat settings classes from one command line: flags named after ``first``'s fields
    go to it, the rest to ``second``."""
    overrides = cli_overrides(args)
    keys = {f.name for f in field_info(first)}
    return (from_dict(first, {k: v for k, v in overrides.items() if k in keys}),
            from_dict(second, {k: v for k, v in overrides.items() if k not in keys}))


def deep_merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out
