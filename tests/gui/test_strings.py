"""Every visible string exists in every language, and every key the GUI uses is defined."""

from __future__ import annotations

import re

from gui.i18n import LANGS, Strings, all_strings
from tests.conftest import ROOT


def test_every_string_has_every_language():
    missing = [(key, lang) for key, langs in all_strings().items() for lang in LANGS
               if not str(langs.get(lang, "")).strip()]
    assert not missing, missing


def test_placeholders_agree_across_languages():
    for key, langs in all_strings().items():
        fields = {lang: sorted(re.findall(r"{(\w+)}", text)) for lang, text in langs.items()}
        assert len({tuple(v) for v in fields.values()}) == 1, (key, fields)


def test_every_key_used_in_gui_code_is_defined():
    defined = set(all_strings())
    used = set()
    for path in (ROOT / "gui").rglob("*.py"):
        used.update(re.findall(r"""\bt\(\s*["']([a-z0-9_.]+)["']""", path.read_text(encoding="utf-8")))
    assert used, "no t('...') calls found"
    assert not (used - defined), sorted(used - defined)


def test_lookup_formats_values():
    assert Strings("zh")("app.mode_gpu", gpus="RTX 3060") == "**GPU 模式**：RTX 3060"
