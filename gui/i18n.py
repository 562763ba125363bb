"""Every visible string, looked up by key in gui/strings/<lang>.yaml."""

from __future__ import annotations

from functools import cache
from pathlib import Path

STRINGS_DIR = Path(__file__).parent / "strings"
LANGS = {"en": "English", "zh": "简体中文"}


@cache
def catalog(lang: str) -> dict[str, str]:
    import yaml

    if lang not in LANGS:
        raise ValueError(f"unknown language {lang!r}; choose one of {sorted(LANGS)}")
    data = yaml.safe_load((STRINGS_DIR / f"{lang}.yaml").read_text(encoding="utf-8")) or {}
    return {str(k): str(v) for k, v in data.items()}


class Strings:
    """``t("train.start")`` returns the text in this language, formatted with keyword values."""

    def __init__(self, lang: str = "en"):
        self.lang = lang
        self._cat = catalog(lang)

    def __call__(self, key: str, **values) -> str:
        text = self._cat.get(key)
        if text is None:
            text = catalog("en").get(key)
        if text is None:
            raise KeyError(f"string {key!r} is missing from gui/strings/en.yaml")
        return text.format(**values) if values else text
