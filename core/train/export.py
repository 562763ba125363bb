"""Export a run: the LoRA adapter (PEFT), a merged 16-bit model, a merged 4-bit model, or GGUF.

    lora      the adapter as PEFT saves it (adapter_config.json + adapter_model.safetensors) and the
              tokenizer: loadable by transformers + PEFT and by vLLM (--enable-lora)
    merged16  base + adapter merged into plain 16-bit weights (any runtime; largest)
    merged4   merged, then quantized to bitsandbytes nf4 (needs a CUDA GPU)
    gguf      merged, then converted by llama.cpp (Unsloth's save_pretrained_gguf on a GPU, else
              llama.cpp's converter directly); without llama.cpp a clear message says what to install

The Evaluate & Export tab and `python -m core export` both call :func:`export_run`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from core.errors import QwenTuneError
from core.settings import ConfigError, setting

FORMATS = ("lora", "merged16", "merged4", "gguf")
GGUF_QUANTS = ("q8_0", "f16", "bf16", "q4_k_m", "q5_k_m")
CONVERTER_NAMES = ("convert_hf_to_gguf.py", "convert-hf-to-gguf.py")
QUANTIZER_NAMES = ("llama-quantize", "quantize")


@dataclass
class ExportConfig:
    """What `python -m core export` and the Export panel take."""

    run: str = setting(help="The run folder to export (runs/<name>).")
    format: str = setting("lora", choices=FORMATS,
                          help="lora: the adapter alone (small; PEFT / vLLM). merged16: base + adapter in "
                               "16-bit. merged4: merged and quantized to 4-bit (GPU). gguf: for llama.cpp, "
                               "Ollama, LM Studio (needs llama.cpp).")
    out: str = setting("", help="Output folder. Empty: <run>/export/<format>.")
    checkpoint: str = setting("", help="Export this checkpoint (e.g. checkpoint-200) instead of the final "
                                       "adapter.")
    gguf_quant: str = setting("q8_0", choices=GGUF_QUANTS,
                              help="GGUF weight type: q8_0 (near lossless, half of f16), f16/bf16 (lossless), "
                                   "q4_k_m / q5_k_m (smallest; need llama.cpp's llama-quantize).")
    overwrite: bool = setting(False, help="Replace an existing output folder.")


class ExportError(QwenTuneError, RuntimeError):
    """An export that cannot be done here; the message says what to do instead."""

    kind = "resource"


# ------------------------------------------------------------------------------------ helpers
def _adapter_dir(run_dir: Path, checkpoint: str) -> Path:
    from core.train.runs import ADAPTER, CHECKPOINTS, latest_checkpoint

    if checkpoint:
        path = run_dir / CHECKPOINTS / checkpoint
        if not (path / "adapter_config.json").is_file():
            raise ConfigError(f"{path} holds no adapter", "checkpoint")
        return path
    path = run_dir / ADAPTER
    if (path / "adapter_config.json").is_file():
        return path
    ckpt = latest_checkpoint(run_dir)
    hint = f"; export a checkpoint instead (--checkpoint {ckpt.name})" if ckpt else ""
    raise ConfigError(f"run {run_dir.name} has no final adapter yet (it is unfinished){hint}", "run")


def _out_dir(cfg: ExportConfig, run_dir: Path) -> Path:
    out = Path(cfg.out).expanduser() if cfg.out else run_dir / "export" / cfg.format
    if out.exists() and any(out.iterdir()):
        if not cfg.overwrite:
            raise ConfigError(f"{out} already exists and is not empty; choose another folder or overwrite",
                              "out")
        shutil.rmtree(out)
    return out


def _copy_tokenizer(src: Path, out: Path) -> None:
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(str(src)).save_pretrained(str(out))


def find_llama_cpp() -> dict:
    """Where llama.cpp is: its folder, the HF->GGUF converter script and the quantizer binary."""
    from core.procs import ROOT

    folders = [os.environ.get("QWENTUNE_LLAMA_CPP"), os.environ.get("UNSLOTH_LLAMA_CPP_PATH"),
               str(Path.home() / ".unsloth" / "llama.cpp"), str(ROOT / "llama.cpp")]
    found = {"folder": None, "converter": None, "quantizer": shutil.which("llama-quantize")}
    for folder in folders:
        if not folder or not Path(folder).is_dir():
            continue
        for name in CONVERTER_NAMES:
            if (Path(folder) / name).is_file():
                found.update(folder=folder, converter=str(Path(folder) / name))
                break
        for sub in ("", "build/bin"):
            for name in QUANTIZER_NAMES:
                cand = Path(folder) / sub / name
                if cand.is_file() and os.access(cand, os.X_OK) and not found["quantizer"]:
                    found["quantizer"] = str(cand)
        if found["converter"]:
            break
    return found


def _load_base_16bit(base: Path):
    """The base model in 16-bit on the best device; a 4-bit checkpoint is dequantized (GPU only)."""
    import torch
    from transformers import AutoModelForCausalLM

    from core.train.backends import is_prequantized

    cuda = torch.cuda.is_available()
    if is_prequantized(base):
        if not cuda:
            raise ExportError(f"the base model {base} is a 4-bit checkpoint; merging it needs a CUDA GPU "
                              "(to dequantize), or train from the 16-bit model")
        model = AutoModelForCausalLM.from_pretrained(str(base), device_map={"": 0})
        return model.dequantize()
    kwargs = {"dtype": "auto"}
    if cuda:
        kwargs["device_map"] = {"": 0}
    return AutoModelForCausalLM.from_pretrained(str(base), **kwargs)


def merge_16bit(base: Path, adapter: Path, out: Path, echo=print) -> Path:
    from peft import PeftModel

    echo(f"merging {adapter} into {base}")
    model = _load_base_16bit(base)
    model = PeftModel.from_pretrained(model, str(adapter))
    model = model.merge_and_unload()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    _copy_tokenizer(adapter if (adapter / "tokenizer_config.json").is_file() else base, out)
    return out


def _merge_4bit(merged16: Path, out: Path, echo=print) -> Path:
    import torch

    if not torch.cuda.is_available():
        raise ExportError("merged4 needs a CUDA GPU (bitsandbytes quantizes on the GPU); export merged16 here, "
                          "or export on the training machine")
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    echo("quantizing the merged model to 4-bit (bitsandbytes nf4)")
    q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                           bnb_4bit_compute_dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(str(merged16), quantization_config=q, device_map={"": 0})
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    _copy_tokenizer(merged16, out)
    return out


def _gguf_unsloth(adapter: Path, out: Path, quant: str, llama: dict, echo=print) -> Path:
    os.environ.setdefault("UNSLOTH_LLAMA_CPP_PATH", llama["folder"])
    from core.train.backends import activate

    activate("unsloth")
    from unsloth import FastLanguageModel

    echo("exporting GGUF with Unsloth (save_pretrained_gguf)")
    model, tokenizer = FastLanguageModel.from_pretrained(str(adapter), load_in_4bit=False,
                                                         use_exact_model_name=True)
    model.save_pretrained_gguf(str(out), tokenizer, quantization_method=quant)
    return out


def _gguf_llama_cpp(base: Path, adapter: Path, out: Path, quant: str, llama: dict, echo=print) -> Path:
    needs_quantizer = quant in ("q4_k_m", "q5_k_m")
    if needs_quantizer and not llama["quantizer"]:
        raise ExportError(f"GGUF {quant} needs llama.cpp's llama-quantize binary (build llama.cpp with cmake), "
                          "or choose q8_0 / f16 / bf16, which the converter writes directly")
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="qwentune-merge-", dir=str(out.parent)) as tmp:
        merged = merge_16bit(base, adapter, Path(tmp) / "merged", echo=echo)
        outtype = "f16" if needs_quantizer else quant
        target = out / f"model-{outtype}.gguf"
        echo(f"converting to GGUF ({outtype}) with {llama['converter']}")
        subprocess.run([sys.executable, llama["converter"], str(merged), "--outfile", str(target),
                        "--outtype", outtype], check=True)
        if needs_quantizer:
            final = out / f"model-{quant}.gguf"
            echo(f"quantizing to {quant} with {llama['quantizer']}")
            subprocess.run([llama["quantizer"], str(target), str(final), quant.upper()], check=True)
            target.unlink()
    return out


def gguf_unavailable_message() -> str:
    return ("GGUF export needs llama.cpp, which was not found. Install it once: git clone "
            "https://github.com/ggml-org/llama.cpp ~/.unsloth/llama.cpp && cmake -S ~/.unsloth/llama.cpp "
            "-B ~/.unsloth/llama.cpp/build && cmake --build ~/.unsloth/llama.cpp/build --target llama-quantize, "
            "plus pip install gguf; or point QWENTUNE_LLAMA_CPP at an existing llama.cpp folder. Meanwhile, "
            "export merged16 and convert it with llama.cpp's convert_hf_to_gguf.py.")


# -------------------------------------------------------------------------------------- entry
def export_run(cfg: ExportConfig, echo=print) -> Path:
    """Export ``cfg.run`` in ``cfg.format``; returns the output folder. Raises ConfigError for a wrong
    setting and ExportError for an export this machine cannot do (with what to do instead)."""
    from core.train.runs import read_status, run_model_paths

    run_dir = Path(cfg.run).expanduser()
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"{run_dir} is not a run folder (no config.yaml)", "run")
    if read_status(run_dir)["state"] in ("queued", "running", "stopping") and not cfg.checkpoint:
        raise ConfigError(f"run {run_dir.name} is still training; wait for it, or export a checkpoint", "run")
    adapter = _adapter_dir(run_dir, cfg.checkpoint)
    if cfg.format == "gguf":  # check before any slow work
        llama = find_llama_cpp()
        if not llama["converter"]:
            raise ExportError(gguf_unavailable_message())
    out = _out_dir(cfg, run_dir)
    if cfg.format == "lora":
        out.mkdir(parents=True, exist_ok=True)
        for item in adapter.iterdir():
            if item.name.startswith("adapter_") or item.name in ("README.md",) or "token" in item.name \
                    or item.name.endswith(".jinja") or item.name == "special_tokens_map.json":
                shutil.copy2(item, out / item.name)
        _write_info(out, run_dir, cfg)
        echo(f"adapter exported to {out}")
        return out
    base = Path(run_model_paths(run_dir).base)
    if cfg.format == "merged16":
        merge_16bit(base, adapter, out, echo=echo)
    elif cfg.format == "merged4":
        import torch

        if not torch.cuda.is_available():
            raise ExportError("merged4 needs a CUDA GPU (bitsandbytes quantizes on the GPU); export merged16 "
                              "here, or export on the training machine")
        with tempfile.TemporaryDirectory(prefix="qwentune-merge-", dir=str(out.parent)) as tmp:
            merged = merge_16bit(base, adapter, Path(tmp) / "merged", echo=echo)
            _merge_4bit(merged, out, echo=echo)
    else:
        from core.train.backends import cuda_available, has_package

        if cuda_available() and has_package("unsloth") and llama["quantizer"]:
            _gguf_unsloth(adapter, out, cfg.gguf_quant, llama, echo=echo)
        else:
            _gguf_llama_cpp(base, adapter, out, cfg.gguf_quant, llama, echo=echo)
    _write_info(out, run_dir, cfg)
    echo(f"{cfg.format} exported to {out}")
    return out


def _write_info(out: Path, run_dir: Path, cfg: ExportConfig) -> None:
    from core.train.runs import now_iso

    info = {"run": str(run_dir), "format": cfg.format, "checkpoint": cfg.checkpoint or "final",
            "exported": now_iso()}
    if cfg.format == "gguf":
        info["gguf_quant"] = cfg.gguf_quant
    (out / "qwentune_export.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
