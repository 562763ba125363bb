"""Shared fixtures. The demo model is built once per machine (cached) and reused by every test."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def stop_process(proc: subprocess.Popen, timeout: float = 30) -> None:
    """End a server the test started: politely first, then for sure."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


@pytest.fixture(scope="session")
def demo_model_path() -> Path:
    from core.demo import ensure_demo_model

    return ensure_demo_model()


@pytest.fixture(scope="session")
def demo_tokenizer(demo_model_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(demo_model_path)


@pytest.fixture(scope="session")
def official_template() -> str:
    return (ROOT / "tests" / "fixtures" / "qwen3_official_chat_template.jinja").read_text(encoding="utf-8")
