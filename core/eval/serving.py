"""How to serve a fine-tuned model: the exact `vllm serve` (or `llama-server`) command and a minimal
OpenAI-client snippet, for the run's adapter or any of its exports.

* adapter (PEFT format, the run's ``adapter/`` or an ``lora`` export): the base model plus
  ``--enable-lora --lora-modules NAME=PATH --max-lora-rank R`` (R: the adapter's rank rounded up
  to a rank vLLM accepts);
* merged model folder (16-bit, or 4-bit bitsandbytes): served directly;
* GGUF file: llama.cpp's ``llama-server --jinja`` (vLLM's GGUF support is experimental).

Every command adds ``--reasoning-parser qwen3`` so replies carry ``reasoning_content`` apart from
``content``, and thinking is switched per request with ``chat_template_kwargs.enable_thinking``.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from core.runfolder import RunFolder
from core.settings import DamagedFile, read_json

VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)
SKIP_DIRS = set(RunFolder.INTERNAL_DIRS)  # the run's working files, not something to serve


@dataclass
class Servable:
    kind: str  # lora | merged16 | merged4 | gguf
    path: str
    label: str


def vllm_lora_rank(rank: int) -> int:
    """The smallest --max-lora-rank vLLM accepts that holds ``rank``."""
    for r in VLLM_LORA_RANKS:
        if rank <= r:
            return r
    raise ValueError(f"LoRA rank {rank} is above vLLM's largest supported rank ({VLLM_LORA_RANKS[-1]})")


def _read_json(path: Path) -> dict:
    """A JSON object file, or {} when it is missing or damaged: the commands are shown for what can
    be read, and a damaged file only costs its own line."""
    try:
        data = read_json(path, expect=dict)
    except DamagedFile:
        return {}
    return data or {}


def find_servables(run_dir: str | Path) -> list[Servable]:
    """The run's adapter and every export found in the run folder (by content, not by name)."""
    folder = RunFolder(run_dir)
    run = folder.path
    out: list[Servable] = []
    if folder.has_adapter():
        out.append(Servable("lora", str(folder.adapter), folder.ADAPTER))
    for cfg in sorted(run.rglob("config.json")):
        folder = cfg.parent
        rel = folder.relative_to(run)
        if rel.parts and rel.parts[0] in SKIP_DIRS:
            continue
        if any(folder.glob("*.safetensors")):
            quant = bool(_read_json(cfg).get("quantization_config"))
            out.append(Servable("merged4" if quant else "merged16", str(folder), str(rel)))
    for adapter_cfg in sorted(run.rglob("adapter_config.json")):
        rel = adapter_cfg.parent.relative_to(run)
        if rel.parts and rel.parts[0] not in SKIP_DIRS:
            out.append(Servable("lora", str(adapter_cfg.parent), str(rel)))
    for gguf in sorted(run.rglob("*.gguf")):
        rel = gguf.relative_to(run)
        if rel.parts[0] not in SKIP_DIRS:
            out.append(Servable("gguf", str(gguf), str(rel)))
    return out


def base_for_serving(name_or_path: str, base_path: str | None = None) -> str:
    """What vLLM should load as the base: the original 16-bit hub id of a catalog model, else the
    exact local folder or hub id the run used."""
    from core.demo import is_demo

    if is_demo(name_or_path) and base_path:
        return base_path
    from core.models.resolve import catalog_entry, repo_id_for

    if catalog_entry(name_or_path) is not None:
        return repo_id_for(name_or_path, method="lora", quant="none", hub="hf")
    folder = Path(name_or_path).expanduser()
    return str(folder.resolve()) if folder.is_dir() else name_or_path


def _q(text: str) -> str:
    return shlex.quote(str(text))


def serve_command(servable: Servable, *, base_model: str = "", name: str = "qwentune", port: int = 8000,
                  max_model_len: int = 8192) -> str:
    """The shell command that serves ``servable`` on 127.0.0.1:``port`` as model ``name``."""
    common = f"--host 127.0.0.1 --port {port} --max-model-len {max_model_len} --reasoning-parser qwen3"
    if servable.kind == "lora":
        if not base_model:
            raise ValueError("serving an adapter needs its base model")
        rank = int(_read_json(Path(servable.path) / "adapter_config.json").get("r") or 16)
        return (f"vllm serve {_q(base_model)} {common} \\\n  --enable-lora --lora-modules "
                f"{_q(f'{name}={servable.path}')} --max-lora-rank {vllm_lora_rank(rank)}")
    if servable.kind in ("merged16", "merged4"):
        quant = " --quantization bitsandbytes" if servable.kind == "merged4" else ""
        return f"vllm serve {_q(servable.path)} --served-model-name {_q(name)}{quant} \\\n  {common}"
    if servable.kind == "gguf":
        return (f"llama-server -m {_q(servable.path)} --jinja --reasoning-format deepseek -c {max_model_len} "
                f"--host 127.0.0.1 --port {port} --alias {_q(name)}")
    raise ValueError(f"unknown kind {servable.kind!r}")


def client_snippet(*, name: str = "qwentune", port: int = 8000, thinking: bool = True) -> str:
    """A minimal OpenAI-client script for the served model, with Qwen3's sampling for the mode."""
    from core.chat.sampling import preset

    p = preset(thinking)
    return f'''from openai import OpenAI

client = OpenAI(base_url="http://127.0.0.1:{port}/v1", api_key="EMPTY")
response = client.chat.completions.create(
    model="{name}",
    messages=[{{"role": "user", "content": "What is 17 * 23?"}}],
    temperature={p["temperature"]},
    top_p={p["top_p"]},
    max_tokens=4096,
    extra_body={{
        "top_k": {p["top_k"]},
        "min_p": {p["min_p"]},
        "chat_template_kwargs": {{"enable_thinking": {thinking}}},
    }},
)
message = response.choices[0].message
print("reasoning:", getattr(message, "reasoning_content", None))
print("answer:", message.content)
'''


def serving_for_run(run_dir: str | Path, *, name: str = "", port: int = 8000, thinking: bool = True) -> list[dict]:
    """For each servable thing in the run: {kind, path, label, command, snippet}."""
    folder = RunFolder(run_dir)
    name = name or folder.name
    base = ""
    if folder.config.is_file():
        from core.config import load_run_config
        from core.train.runs import recorded_base

        cfg = load_run_config(folder.config)
        base = base_for_serving(cfg.model.name_or_path, recorded_base(folder.path)[0])
    out = []
    for s in find_servables(folder.path):
        try:
            cmd = serve_command(s, base_model=base, name=name, port=port)
        except ValueError as exc:
            cmd = f"# {exc}"
        out.append({"kind": s.kind, "path": s.path, "label": s.label, "command": cmd,
                    "snippet": client_snippet(name=name, port=port, thinking=thinking)})
    return out
