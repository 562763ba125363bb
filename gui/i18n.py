"""Every visible string, looked up by key. Strings live in gui/strings/<area>.yaml, each key with
all languages side by side: ``train.start: {en: "Start", zh: "开始训练"}``.

A setting's help text is written once, in English, beside the setting (core/config.py). The keys
``<area>.h.<setting path>`` hold only its translations; English pages read the setting itself
(``Strings.setting_help``), so the two English texts can never drift apart."""

from __future__ import annotations

from functools import cache
from pathlib import Path

STRINGS_DIR = Path(__file__).parent / "strings"
LANGS = {"en": "English", "zh": "简体中文"}
HELP_MARK = ".h."  # <area>.h.<path>: translations of a setting's help (no English entry)


def is_help_key(key: str) -> bool:
    return HELP_MARK in key


@cache
def all_strings() -> dict[str, dict[str, str]]:
    """key -> {lang: text}, from every file in gui/strings. A key defined twice is an error."""
    import yaml

    # The C loader (libyaml) reads the strings several times faster than the pure-Python one; both
    # are safe loaders. Fall back when PyYAML was built without libyaml.
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    out: dict[str, dict[str, str]] = {}
    for path in sorted(STRINGS_DIR.glob("*.yaml")):
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=loader) or {}
        for key, langs in data.items():
            if key in out:
                raise ValueError(f"{path.name}: string {key!r} is defined twice")
            if not isinstance(langs, dict):
                raise ValueError(f"{path.name}: string {key!r} must map languages to text")
            if is_help_key(str(key)) and "en" in langs:
                raise ValueError(f"{path.name}: {key!r} is a setting's help: its English text belongs in "
                                 "core/config.py (the setting's help), not here")
            out[str(key)] = {str(lang): str(text) for lang, text in langs.items()}
    return out


class Strings:
    """``t("app.title")`` returns the text in this language, formatted with keyword values."""

    def __init__(self, lang: str = "en"):
        if lang not in LANGS:
            raise ValueError(f"unknown language {lang!r}; choose one of {sorted(LANGS)}")
        self.lang = lang
        self._all = all_strings()

    def __call__(self, key: str, **values) -> str:
        entry = self._all.get(key)
        if entry is None:
            raise KeyError(f"string {key!r} is missing from gui/strings/*.yaml")
        text = entry.get(self.lang) or entry.get("en")
        if text is None:
            raise KeyError(f"string {key!r} has no {self.lang!r} text in gui/strings/*.yaml")
        return text.format(**values) if values else text

    def setting_label(self, area: str, path: str) -> str:
        """A setting's label (``<area>.f.<path>``); the dotted path where none is written."""
        try:
            return self(f"{area}.f.{path}")
        except KeyError:
            return path

    def setting_help(self, area: str, info) -> str:
        """A setting's help: its own text (core.config) in English, ``<area>.h.<path>`` elsewhere
        (the English text where no translation is written). ``info``: core.settings.field_info."""
        if self.lang == "en":
            return info.help
        try:
            return self(f"{area}.h.{info.path}")
        except KeyError:
            return info.help
