"""Every visible string exists in every language, and every key the GUI uses is defined."""

from __future__ import annotations

import re

from gui.i18n import LANGS, Strings, all_strings, is_help_key
from tests.conftest import ROOT

# The area of each help key -> the settings class whose help it translates.
HELP_AREAS = {"train": "RunConfig", "data": ("MixConfig", "SourceConfig"), "models": "ModelConfig"}


def test_every_string_has_every_language():
    missing = [(key, lang) for key, langs in all_strings().items() for lang in LANGS
               if not is_help_key(key) and not str(langs.get(lang, "")).strip()]
    assert not missing, missing


def test_help_keys_translate_a_real_setting_and_carry_no_english_copy():
    import core.config as config
    from core.settings import field_info

    paths = {}
    for area, classes in HELP_AREAS.items():
        classes = (classes,) if isinstance(classes, str) else classes
        paths[area] = {f.path for c in classes for f in field_info(getattr(config, c))}
    helps = {k: v for k, v in all_strings().items() if is_help_key(k)}
    assert len(helps) > 40
    for key, langs in helps.items():
        area, path = key.split(".h.", 1)
        assert path in paths[area], key
        assert "en" not in langs and set(langs) == set(LANGS) - {"en"}, key


def test_setting_help_is_the_settings_own_text_in_english():
    from core.config import RunConfig
    from core.settings import field_info

    info = next(f for f in field_info(RunConfig) if f.path == "train.micro_batch")
    assert Strings("en").setting_help("train", info) == info.help
    zh = Strings("zh").setting_help("train", info)
    assert zh != info.help and "显存" in zh


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
