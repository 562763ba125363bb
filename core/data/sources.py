"""Read the rows of a source: local files and folders, shipped samples, Hugging Face / ModelScope ids.

Every row keeps its origin (``file.jsonl:17`` for line-based files and JSON arrays, ``file.parquet[17]``
for tables, ``org/dataset[17]`` for hub rows; indexes are 0-based), so any later problem points back
to it. A row that cannot be read (malformed JSON, broken UTF-8, not an object) becomes a
:class:`Skip` with a reason; a source that cannot be read at all raises :class:`DataError`.
Nothing here parses the row's meaning: that is :mod:`core.data.formats`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from core.settings import ConfigError

ROOT = Path(__file__).resolve().parent.parent.parent
SAMPLES_DIR = ROOT / "presets" / "samples"
MIX_PRESETS_DIR = ROOT / "presets" / "mixes"
SAMPLE_PREFIX = "samples/"
FILE_TYPES = (".jsonl", ".json", ".csv", ".parquet")
HUB_TIMEOUT_S = 5.0
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class DataError(ConfigError):
    """A whole source cannot be used (missing file, unreachable hub, no usable rows...)."""

    kind = "data"


@dataclass
class Row:
    data: dict
    origin: str


@dataclass
class Skip:
    origin: str
    reason: str  # short category, grouped in reports ("malformed JSON")
    detail: str = ""  # the specifics of this row


@dataclass
class FileInfo:
    path: str
    sha256: str
    rows: int = 0


@dataclass
class SourceLocation:
    """Where a source's rows come from, as recorded in the manifest."""

    kind: str  # "sample" | "local" | "hf" | "modelscope"
    files: list[FileInfo] = field(default_factory=list)
    hub_id: str = ""
    subset: str = ""
    split: str = ""
    revision: str = ""
    limit: int = 0
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        if self.kind in ("hf", "modelscope"):
            return {"kind": self.kind, "id": self.hub_id, "subset": self.subset, "split": self.split,
                    "revision": self.revision or "unknown", "limit": self.limit}
        return {"kind": self.kind, "files": [{"path": f.path, "sha256": f.sha256, "rows": f.rows}
                                             for f in self.files], "limit": self.limit}


# ------------------------------------------------------------------------------------ resolving
def list_samples() -> list[str]:
    """Shipped sample names, usable as a source path: ``samples/<name>``."""
    if not SAMPLES_DIR.is_dir():
        return []
    return [SAMPLE_PREFIX + p.stem for p in sorted(SAMPLES_DIR.glob("*.jsonl"))]


def sample_path(name: str) -> Path | None:
    """``samples/math_reasoning`` (or ``samples/math_reasoning.jsonl``) -> its file, else None."""
    if not name.startswith(SAMPLE_PREFIX):
        return None
    stem = name[len(SAMPLE_PREFIX):]
    if stem.endswith(".jsonl"):
        stem = stem[: -len(".jsonl")]
    if not stem or "/" in stem or stem.startswith("."):
        return None
    return SAMPLES_DIR / f"{stem}.jsonl"


def source_kind(path: str, hub: str = "auto") -> str:
    """Decide where ``path`` lives: "sample", "local", "hf" or "modelscope"."""
    path = path.strip()
    if hub in ("hf", "modelscope"):
        return hub
    if sample_path(path) is not None:
        return "sample"
    if hub == "local":
        return "local"
    if Path(path).expanduser().exists():
        return "local"
    lowered = path.lower()
    if lowered.startswith(("hf://", "hf:")):
        return "hf"
    if lowered.startswith(("ms://", "ms:", "modelscope://", "modelscope:")):
        return "modelscope"
    if _HUB_ID.match(path) and not lowered.endswith(FILE_TYPES):
        return "hf"
    return "local"


def hub_id(path: str) -> str:
    for prefix in ("hf://", "hf:", "ms://", "ms:", "modelscope://", "modelscope:"):
        if path.lower().startswith(prefix):
            return path[len(prefix):]
    return path


def default_name(path: str, kind: str) -> str:
    if kind == "sample":
        return path[len(SAMPLE_PREFIX):].removesuffix(".jsonl")
    if kind in ("hf", "modelscope"):
        return hub_id(path).rstrip("/").split("/")[-1]
    p = Path(path.rstrip("/"))
    return p.stem if p.suffix.lower() in FILE_TYPES else p.name or "data"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def local_files(path: Path) -> list[Path]:
    """The data files of a file or folder source (folders: recursive, sorted, hidden files skipped)."""
    if path.is_file():
        if path.suffix.lower() not in FILE_TYPES:
            raise DataError(f"unsupported file type {path.suffix or '(none)'!r}; use one of "
                            f"{', '.join(FILE_TYPES)}", "", str(path))
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in FILE_TYPES
                       and not any(part.startswith(".") for part in p.relative_to(path).parts))
        if not files:
            raise DataError(f"the folder holds no {', '.join(FILE_TYPES)} files", "", str(path))
        return files
    raise DataError("file or folder not found", "", str(path))


# ------------------------------------------------------------------------------------- readers
def _display(path: Path) -> str:
    """A short path for origins: relative to the working folder or the repo when inside them."""
    for base in (Path.cwd(), ROOT):
        try:
            return str(path.resolve().relative_to(base.resolve()))
        except ValueError:
            continue
    return str(path)


def _utf8_problem(raw: bytes, exc: UnicodeDecodeError) -> str:
    return f"byte 0x{raw[exc.start]:02x} at column {exc.start + 1} is not valid UTF-8"


def read_jsonl(path: Path) -> Iterator[Row | Skip]:
    name = _display(path)
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            origin = f"{name}:{lineno}"
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            if not raw.strip():
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield Skip(origin, "broken UTF-8", _utf8_problem(raw, exc))
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError as exc:
                yield Skip(origin, "malformed JSON", f"{exc.msg} at column {exc.colno}")
                continue
            if not isinstance(data, dict):
                yield Skip(origin, "not a JSON object", f"the line holds a {type(data).__name__}")
                continue
            yield Row(data, origin)


def _decode_file(path: Path) -> tuple[str, bool]:
    """Text of a whole file; broken UTF-8 is kept as surrogates (flag True) so rows can be skipped."""
    raw = path.read_bytes()
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    try:
        return raw.decode("utf-8"), False
    except UnicodeDecodeError:
        return raw.decode("utf-8", errors="surrogateescape"), True


def _has_surrogates(value) -> bool:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, dict):
        return any(_has_surrogates(k) or _has_surrogates(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_surrogates(v) for v in value)
    return False


def read_json(path: Path) -> Iterator[Row | Skip]:
    """A JSON array of objects (each row's origin is the line it starts on), an object holding one
    such array, or JSON Lines saved as .json."""
    text, broken = _decode_file(path)
    name = _display(path)
    stripped = text.lstrip()
    if not stripped:
        return
    if stripped[0] == "{":
        try:
            whole = json.loads(text)
        except json.JSONDecodeError as exc:
            if exc.msg == "Extra data":  # several objects: JSON Lines with a .json name
                yield from read_jsonl(path)
                return
            raise DataError(f"malformed JSON: {exc.msg}", "", f"{name}:{exc.lineno}") from None
        lists = [k for k, v in whole.items() if isinstance(v, list) and v and isinstance(v[0], dict)]
        if len(lists) != 1 or any(k in whole for k in ("messages", "conversations", "instruction", "problem")):
            # One conversation stored as a single object.
            if broken and _has_surrogates(whole):
                yield Skip(f"{name}:1", "broken UTF-8", "the object holds bytes that are not UTF-8")
            else:
                yield Row(whole, f"{name}:1")
            return
        key = lists[0]
        for i, item in enumerate(whole[key]):
            yield _check_row(item, f"{name}[{key}][{i}]", broken)
        return
    if stripped[0] != "[":
        raise DataError("expected a JSON array of rows or an object", "", f"{name}:1")
    decoder = json.JSONDecoder()
    pos = text.index("[") + 1
    line = text.count("\n", 0, pos) + 1
    ws = re.compile(r"[ \t\r\n]*")
    while True:
        m = ws.match(text, pos)
        line += text.count("\n", pos, m.end())
        pos = m.end()
        if pos < len(text) and text[pos] == "]":
            return
        try:
            item, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise DataError(f"malformed JSON: {exc.msg} (column {exc.colno}); the rest of the file "
                            "cannot be read", "", f"{name}:{exc.lineno}") from None
        yield _check_row(item, f"{name}:{line}", broken)
        line += text.count("\n", pos, end)
        m = ws.match(text, end)
        line += text.count("\n", end, m.end())
        pos = m.end()
        if pos < len(text) and text[pos] == ",":
            pos += 1
            continue
        if pos < len(text) and text[pos] == "]":
            return
        raise DataError("malformed JSON: expected ',' or ']' between rows", "", f"{name}:{line}")


def _check_row(item, origin: str, broken: bool) -> Row | Skip:
    if not isinstance(item, dict):
        return Skip(origin, "not a JSON object", f"the row is a {type(item).__name__}")
    if broken and _has_surrogates(item):
        return Skip(origin, "broken UTF-8", "the row holds bytes that are not UTF-8")
    return Row(item, origin)


def read_csv(path: Path) -> Iterator[Row | Skip]:
    import csv
    import io

    text, broken = _decode_file(path)
    name = _display(path)
    if not text.strip():
        return
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except csv.Error as exc:
        raise DataError(f"unreadable CSV header: {exc}", "", f"{name}:1") from None
    if not any(h.strip() for h in header):
        raise DataError("the CSV header row is empty", "", f"{name}:1")
    while True:
        start = reader.line_num + 1
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield Skip(f"{name}:{start}", "malformed CSV", str(exc))
            continue
        origin = f"{name}:{start}"
        if not values or not any(v.strip() for v in values):
            continue
        if len(values) != len(header):
            yield Skip(origin, "malformed CSV", f"{len(values)} fields, the header has {len(header)}")
            continue
        row = dict(zip(header, values))
        if broken and _has_surrogates(row):
            yield Skip(origin, "broken UTF-8", "the row holds bytes that are not UTF-8")
            continue
        yield Row(row, origin)


def read_parquet(path: Path) -> Iterator[Row | Skip]:
    import pyarrow.parquet as pq

    name = _display(path)
    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a file that is not Parquet
        raise DataError(f"not a readable Parquet file ({exc})", "", name) from None
    i = 0
    for batch in pf.iter_batches(batch_size=4096):
        for item in batch.to_pylist():
            yield _check_row(item, f"{name}[{i}]", False)
            i += 1


READERS = {".jsonl": read_jsonl, ".json": read_json, ".csv": read_csv, ".parquet": read_parquet}


def read_file(path: Path) -> Iterator[Row | Skip]:
    return READERS[path.suffix.lower()](path)


# ----------------------------------------------------------------------------------------- hubs
def http_get(url: str, timeout: float = HUB_TIMEOUT_S, headers: dict | None = None) -> tuple[int, bytes]:
    """(status, body) of a GET request; status 0 and the reason as body when no answer came in time.
    A TCP connection alone proves nothing (some networks accept every connection and then stay
    silent), so this waits for a real HTTP answer. DNS look-ups can hang past socket timeouts, so
    the request runs in a thread that is abandoned at the deadline."""
    import urllib.error
    import urllib.request

    result: dict = {}

    def attempt() -> None:
        req = urllib.request.Request(url, headers={"User-Agent": "qwentune", **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                result["answer"] = (resp.status, resp.read(1 << 20))
        except urllib.error.HTTPError as exc:
            result["answer"] = (exc.code, b"")
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            result["answer"] = (0, (str(reason) or type(exc).__name__).encode())

    t = threading.Thread(target=attempt, daemon=True)
    t.start()
    t.join(timeout + 1.0)
    return result.get("answer", (0, f"no answer within {timeout:g} s".encode()))


def probe(url: str, timeout: float = HUB_TIMEOUT_S) -> str | None:
    """None when ``url`` answers over HTTP (any status) within ``timeout``, else the reason."""
    status, body = http_get(url, timeout)
    return None if status else body.decode("utf-8", "replace")


def hf_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def modelscope_endpoint() -> str:
    domain = os.environ.get("MODELSCOPE_DOMAIN", "www.modelscope.cn")
    return domain if "://" in domain else f"https://{domain}"


def _offline_error(hub_name: str, dataset: str, url: str, why: str, hint: str) -> DataError:
    return DataError(f"cannot reach {hub_name} ({url}) to load dataset '{dataset}': {why}. "
                     f"This machine looks offline. {hint}", "path")


def hf_load(dataset: str, subset: str, split: str, limit: int):
    """Rows of a Hugging Face dataset (streamed when a limit is set) and its revision. The hub
    boundary: tests replace this function."""
    revision = ""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() not in ("1", "true", "yes"):
        token = os.environ.get("HF_TOKEN")
        status, body = http_get(f"{hf_endpoint()}/api/datasets/{dataset}",
                                headers={"Authorization": f"Bearer {token}"} if token else None)
        if status == 0:
            raise _offline_error("the Hugging Face hub", dataset, hf_endpoint(), body.decode("utf-8", "replace"),
                                 "Download the dataset on a connected machine and point 'path' at the "
                                 "files, or set HF_HUB_OFFLINE=1 to use a copy in the local cache.")
        if status == 404:
            raise DataError(f"dataset '{dataset}' was not found on the Hugging Face hub ({hf_endpoint()}); "
                            "check the id (owner/name)", "path")
        if status in (401, 403):
            raise DataError(f"dataset '{dataset}' on the Hugging Face hub is private or gated: accept its terms "
                            "on the website and set HF_TOKEN (or run `huggingface-cli login`)", "path")
        if status == 200:
            try:
                revision = json.loads(body).get("sha") or ""
            except ValueError:
                revision = ""
    import datasets

    ds = datasets.load_dataset(dataset, subset or None, split=split, streaming=bool(limit))
    return ds, revision


def modelscope_load(dataset: str, subset: str, split: str, limit: int):
    """Rows of a ModelScope dataset and its revision. The hub boundary: tests replace it."""
    try:
        from modelscope.msdatasets import MsDataset
    except ImportError as exc:
        raise DataError(f"dataset '{dataset}' is on ModelScope, but the modelscope package is not installed "
                        f"or incomplete ({exc}). Install it with: .venv/bin/pip install modelscope", "hub") from None
    why = probe(modelscope_endpoint())
    if why:
        raise _offline_error("ModelScope", dataset, modelscope_endpoint(), why,
                             "Download the dataset on a connected machine and point 'path' at the files.")
    kwargs = {"split": split}
    if subset:
        kwargs["subset_name"] = subset
    if limit:
        kwargs["use_streaming"] = True
    return MsDataset.load(dataset, **kwargs), "master"


def read_hub(kind: str, dataset: str, subset: str, split: str, limit: int,
             loaders: dict | None = None) -> tuple[Iterator[Row | Skip], str]:
    loaders = loaders or {"hf": hf_load, "modelscope": modelscope_load}
    hub_name = "Hugging Face" if kind == "hf" else "ModelScope"
    try:
        ds, revision = loaders[kind](dataset, subset, split, limit)
    except DataError:
        raise
    except Exception as exc:  # datasets/modelscope raise many types; the user needs the id and the text
        raise DataError(f"{hub_name} dataset '{dataset}' (subset {subset or '-'}, split {split}) could "
                        f"not be loaded: {type(exc).__name__}: {exc}", "path") from None

    def rows() -> Iterator[Row | Skip]:
        try:
            for i, item in enumerate(ds):
                if limit and i >= limit:
                    return
                origin = f"{dataset}[{i}]"
                yield _check_row(dict(item) if hasattr(item, "keys") else item, origin, False)
        except DataError:
            raise
        except Exception as exc:
            raise DataError(f"reading {hub_name} dataset '{dataset}' failed: {type(exc).__name__}: {exc}",
                            "path") from None

    return rows(), revision


# --------------------------------------------------------------------------------------- public
def open_source(path: str, hub: str = "auto", split: str = "train", subset: str = "", limit: int = 0,
                loaders: dict | None = None) -> tuple[Iterator[Row | Skip], SourceLocation]:
    """Rows (and skips) of one source, plus where they come from. Raises DataError for a source
    that cannot be opened. ``limit`` counts rows read, skips included."""
    kind = source_kind(path, hub)
    if kind in ("hf", "modelscope"):
        dataset = hub_id(path.strip())
        rows, revision = read_hub(kind, dataset, subset, split, limit, loaders)
        return rows, SourceLocation(kind, hub_id=dataset, subset=subset, split=split, revision=revision,
                                    limit=limit)
    if kind == "sample":
        p = sample_path(path.strip())
        if p is None or not p.exists():
            raise DataError(f"no shipped sample named {path!r}; samples: {', '.join(list_samples())}", "path")
        files = [p]
    else:
        files = local_files(Path(path.strip()).expanduser())
    loc = SourceLocation(kind, limit=limit)
    loc.files = [FileInfo(_display(p), file_sha256(p)) for p in files]

    def rows() -> Iterator[Row | Skip]:
        n = 0
        for p, info in zip(files, loc.files):
            before = n
            for item in read_file(p):
                if limit and n >= limit:
                    return
                n += 1
                info.rows += 1
                yield item
            if n == before:
                if len(files) == 1:
                    raise DataError("the file is empty (no rows)", "", info.path)
                loc.warnings.append(f"{info.path}: empty file, skipped")

    return rows(), loc


def store_upload(src: str | os.PathLike, uploads_dir: str | os.PathLike) -> Path:
    """Copy an uploaded file into ``uploads_dir`` under a content-addressed name, so the mix manifest
    can point at a file that outlives the web server's temporary upload."""
    import shutil

    src = Path(src)
    if src.suffix.lower() not in FILE_TYPES:
        raise DataError(f"unsupported file type {src.suffix or '(none)'!r}; use one of {', '.join(FILE_TYPES)}",
                        "path", src.name)
    digest = file_sha256(src)[:12]
    name = re.sub(r"[^\w.+-]", "_", src.name) or f"upload{src.suffix}"
    out = Path(uploads_dir) / f"{digest}-{name}"
    out.parent.mkdir(parents=True, exist_ok=True)
    if not out.exists():
        shutil.copyfile(src, out)
    return out
