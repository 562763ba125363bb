"""The Qwen3 model catalog (presets/models.yaml): shapes and download ids, validated on load.

``Arch`` is the part of a model's config.json that decides memory; it is built either from the
catalog or from any Qwen3 / Qwen3-MoE ``config.json`` (:meth:`Arch.from_hf_config`), so local
models get the same estimates as catalog ones.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from core.choices import CHECKPOINT_KINDS, HUBS
from core.settings import ConfigError

CATALOG_PATH = Path(__file__).resolve().parent.parent.parent / "presets" / "models.yaml"


@dataclass(frozen=True)
class Arch:
    """Shape of a Qwen3 decoder. MoE models set ``experts`` > 0; their MLP per layer is
    ``experts`` experts of width ``moe_intermediate`` of which ``active_experts`` run per token."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int = 128
    vocab: int = 151936
    tied_embeddings: bool = False
    experts: int = 0
    active_experts: int = 0
    moe_intermediate: int = 0

    @property
    def is_moe(self) -> bool:
        return self.experts > 0

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def active_intermediate(self) -> int:
        """MLP width a token actually passes through (sum over its active experts for MoE)."""
        return self.active_experts * self.moe_intermediate if self.is_moe else self.intermediate

    @classmethod
    def from_hf_config(cls, config: dict) -> Arch:
        """Build from a Qwen3 or Qwen3-MoE ``config.json`` dict (also nested ``text_config``)."""
        if "text_config" in config and "hidden_size" not in config:
            config = config["text_config"]
        try:
            hidden = int(config["hidden_size"])
            heads = int(config["num_attention_heads"])
            experts = int(config.get("num_experts") or 0)
            return cls(
                layers=int(config["num_hidden_layers"]),
                hidden=hidden,
                intermediate=int(config.get("intermediate_size") or 0),
                heads=heads,
                kv_heads=int(config.get("num_key_value_heads") or heads),
                head_dim=int(config.get("head_dim") or hidden // heads),
                vocab=int(config["vocab_size"]),
                tied_embeddings=bool(config.get("tie_word_embeddings", False)),
                experts=experts,
                active_experts=int(config.get("num_experts_per_tok") or 0) if experts else 0,
                moe_intermediate=int(config.get("moe_intermediate_size") or 0) if experts else 0,
            )
        except KeyError as exc:
            raise ConfigError(f"config.json lacks {exc.args[0]!r}; is this a Qwen3 model?") from None
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"config.json has a malformed value ({exc})") from None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ParamCounts:
    """Parameters by how they are stored: ``linear`` are the projections that QLoRA quantizes
    (attention, MLP / experts); ``embed`` the token embedding and LM head; ``other`` norms and
    MoE routers, always kept in 16-bit."""

    linear: int
    embed: int
    other: int

    @property
    def total(self) -> int:
        return self.linear + self.embed + self.other


def param_counts(arch: Arch) -> ParamCounts:
    h = arch.hidden
    attn = h * arch.q_dim + 2 * h * arch.kv_dim + arch.q_dim * h
    if arch.is_moe:
        mlp = arch.experts * 3 * h * arch.moe_intermediate
        router = h * arch.experts
    else:
        mlp = 3 * h * arch.intermediate
        router = 0
    norms = 2 * h + 2 * arch.head_dim  # input / post-attention RMSNorm, q_norm / k_norm
    embed = arch.vocab * h * (1 if arch.tied_embeddings else 2)
    return ParamCounts(linear=arch.layers * (attn + mlp), embed=embed,
                       other=arch.layers * (norms + router) + h)


def param_count(arch: Arch) -> int:
    """Total parameters (embedding counted once when tied)."""
    return param_counts(arch).total


def lora_param_count(arch: Arch, rank: int, targets: list[str] | tuple[str, ...]) -> int:
    """LoRA parameters: rank x (in + out) per targeted projection. For MoE models the MLP
    targets adapt every expert (what Unsloth and PEFT do for Qwen3-MoE)."""
    h, i = arch.hidden, arch.intermediate
    dims = {"q_proj": (h, arch.q_dim), "k_proj": (h, arch.kv_dim), "v_proj": (h, arch.kv_dim),
            "o_proj": (arch.q_dim, h)}
    mlp_copies = 1
    if arch.is_moe:
        i = arch.moe_intermediate
        mlp_copies = arch.experts
    dims.update({"gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)})
    unknown = [t for t in targets if t not in dims]
    if unknown:
        raise ConfigError(f"unknown target module {unknown[0]!r}; known: {list(dims)}", "target_modules")
    per_layer = 0
    for t in targets:
        n_in, n_out = dims[t]
        per_layer += rank * (n_in + n_out) * (mlp_copies if t.endswith(("gate_proj", "up_proj", "down_proj"))
                                               else 1)
    return arch.layers * per_layer


@dataclass(frozen=True)
class ModelEntry:
    key: str
    display: str
    params_b: float
    arch: Arch
    hf: dict = field(default_factory=dict)
    modelscope: dict = field(default_factory=dict)
    notes: str = ""
    context_len: int = 32768

    @property
    def is_moe(self) -> bool:
        return self.arch.is_moe

    def repo(self, hub: str = "hf", kind: str = "original") -> str | None:
        """Repository id on ``hub`` for checkpoint ``kind``, or None where none exists."""
        if hub not in HUBS:
            raise ValueError(f"unknown hub {hub!r}; choose one of {HUBS}")
        return (self.hf if hub == "hf" else self.modelscope).get(kind)

    def to_dict(self) -> dict:
        return {"key": self.key, "display": self.display, "params_b": self.params_b,
                "arch": self.arch.to_dict(), "hf": dict(self.hf), "modelscope": dict(self.modelscope),
                "notes": self.notes, "context_len": self.context_len}


_ARCH_INTS = ("layers", "hidden", "intermediate", "heads", "kv_heads", "head_dim", "vocab",
              "experts", "active_experts", "moe_intermediate")
_ENTRY_KEYS = {"display", "params_b", "arch", "hf", "modelscope", "notes", "context_len"}


def _entry(key: str, raw: object, where_line) -> ModelEntry:
    def fail(msg: str, sub: str = "") -> ConfigError:
        path = f"{key}.{sub}" if sub else key
        return ConfigError(msg, path, where_line(path))

    if not isinstance(raw, dict):
        raise fail("expected a mapping with display, params_b, arch, hf, modelscope")
    unknown = set(raw) - _ENTRY_KEYS
    if unknown:
        raise fail(f"unknown field; known: {sorted(_ENTRY_KEYS)}", sorted(unknown)[0])
    for required in ("display", "params_b", "arch", "hf", "modelscope"):
        if required not in raw:
            raise fail("required field is missing", required)
    arch_raw = raw["arch"]
    if not isinstance(arch_raw, dict):
        raise fail("expected a mapping of shape fields", "arch")
    extra = set(arch_raw) - set(_ARCH_INTS) - {"tied_embeddings"}
    if extra:
        raise fail(f"unknown arch field; known: {sorted(_ARCH_INTS + ('tied_embeddings',))}",
                   f"arch.{sorted(extra)[0]}")
    for name in _ARCH_INTS:
        value = arch_raw.get(name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise fail(f"expected a whole number >= 0, got {value!r}", f"arch.{name}")
    if not isinstance(arch_raw.get("tied_embeddings"), bool):
        raise fail("expected true or false", "arch.tied_embeddings")
    arch = Arch(**arch_raw)
    for name in ("layers", "hidden", "heads", "kv_heads", "head_dim", "vocab"):
        if getattr(arch, name) <= 0:
            raise fail("must be at least 1", f"arch.{name}")
    if arch.heads % arch.kv_heads:
        raise fail(f"heads ({arch.heads}) must be a multiple of kv_heads ({arch.kv_heads})", "arch.kv_heads")
    if arch.is_moe:
        if not 0 < arch.active_experts <= arch.experts or arch.moe_intermediate <= 0:
            raise fail("an MoE model needs 0 < active_experts <= experts and moe_intermediate > 0",
                       "arch.active_experts")
    elif arch.intermediate <= 0 or arch.active_experts or arch.moe_intermediate:
        raise fail("a dense model needs intermediate > 0 and no active_experts / moe_intermediate",
                   "arch.intermediate")
    params_b = raw["params_b"]
    if isinstance(params_b, bool) or not isinstance(params_b, (int, float)) or params_b <= 0:
        raise fail(f"expected a positive number of billions, got {params_b!r}", "params_b")
    counted = param_count(arch) / 1e9
    if abs(counted - params_b) > 0.05 * counted:
        raise fail(f"{params_b}B disagrees with the {counted:.2f}B parameters the shape implies", "params_b")
    hubs = {}
    for hub in HUBS:
        ids = raw[hub]
        if not isinstance(ids, dict) or set(ids) != set(CHECKPOINT_KINDS):
            raise fail(f"expected exactly the keys {list(CHECKPOINT_KINDS)}", hub)
        for kind, repo in ids.items():
            if repo is not None and (not isinstance(repo, str) or repo.count("/") != 1 or " " in repo):
                raise fail(f"expected an 'owner/name' repository id or null, got {repo!r}", f"{hub}.{kind}")
        if not ids["original"]:
            raise fail("every model needs its original repository", f"{hub}.original")
        if arch.is_moe and ids["dynamic4"]:
            raise fail("MoE models have no Unsloth dynamic 4-bit fine-tuning checkpoint; use null",
                       f"{hub}.dynamic4")
        hubs[hub] = dict(ids)
    context_len = raw.get("context_len", 32768)
    if isinstance(context_len, bool) or not isinstance(context_len, int) or context_len < 512:
        raise fail(f"expected a whole number >= 512, got {context_len!r}", "context_len")
    return ModelEntry(key=key, display=str(raw["display"]), params_b=float(params_b), arch=arch,
                      hf=hubs["hf"], modelscope=hubs["modelscope"], notes=str(raw.get("notes") or ""),
                      context_len=context_len)


def load_catalog(path: str | Path | None = None) -> dict[str, ModelEntry]:
    """key -> ModelEntry, in file order. Errors name the file, line and field."""
    path = Path(path) if path else CATALOG_PATH
    try:
        mtime = path.stat().st_mtime_ns
    except OSError:
        mtime = 0  # read_yaml reports the missing file
    return dict(_load_catalog(str(path), mtime))


@lru_cache(maxsize=8)
def _load_catalog(path_text: str, mtime: int) -> dict[str, ModelEntry]:
    # Keyed on the file's mtime: an edited catalog is read again, an unchanged one parsed once.
    from core.settings import read_yaml

    path = Path(path_text)
    data, lines = read_yaml(path)
    if not isinstance(data, dict) or not data:
        raise ConfigError("expected a mapping of model keys (e.g. qwen3-8b) to entries", "", str(path))

    def where_line(dotted: str) -> str:
        parts = dotted.split(".")
        while parts:
            line = lines.get(".".join(parts))
            if line:
                return f"{path}:{line}"
            parts.pop()
        return str(path)

    out: dict[str, ModelEntry] = {}
    for key, raw in data.items():
        key = str(key)
        if key != key.lower() or " " in key:
            raise ConfigError("model keys are lower-case without spaces", key, where_line(key))
        out[key] = _entry(key, raw, where_line)
    return out


def get_model(key: str, path: str | Path | None = None) -> ModelEntry:
    catalog = load_catalog(path)
    try:
        return catalog[key.lower()]
    except KeyError:
        raise ConfigError(f"unknown model {key!r}; known: {', '.join(catalog)}", "model") from None
