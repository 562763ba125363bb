"""The Data tab: its pieces against the demo tokenizer, and the real app in a browser (load the
preset, see counts, the histogram and the highlighted preview, save the mix for the Train tab)."""

from __future__ import annotations

import json

import pytest

from core.config import MixConfig, SourceConfig
from core.data.mix import build_mix
from core.settings import ConfigError, to_dict
from gui.i18n import Strings
from tests.e2e.conftest import ARTIFACTS, app_server, browser, page  # noqa: F401 (fixtures)


class Ctx:
    def __init__(self, lang="en"):
        self.lang = lang
        self.t = Strings(lang)


@pytest.fixture(scope="module")
def result(demo_tokenizer):
    cfg = MixConfig(sources=[SourceConfig(path="samples/math_reasoning", ratio=3),
                             SourceConfig(path="samples/chat_zh", ratio=1)])
    return build_mix(cfg, demo_tokenizer)


def test_form_settings_become_a_checked_mix_config():
    from gui.tabs.data import mix_config

    sources = [to_dict(SourceConfig(path="samples/chat_en", ratio=1))]
    cfg = mix_config(sources, {"seed": 7.0, "max_seq_len": 1024.0, "overlong": "drop", "upsample": False,
                               "total": 0.0, "eval_fraction": 0.1, "shuffle": True})
    assert cfg.seed == 7 and cfg.max_seq_len == 1024 and cfg.eval_fraction == 0.1
    with pytest.raises(ConfigError, match="max_seq_len"):
        mix_config(sources, {"max_seq_len": 2})


def test_counts_table_drops_and_warnings(result):
    from gui.tabs.data import COLUMNS, counts_table, drops_markdown, warnings_markdown

    ctx = Ctx("zh")
    rows = counts_table(ctx.t, result)
    assert len(rows) == 3 and all(len(r) == len(COLUMNS) for r in rows)
    assert rows[-1][0] == "合计" and rows[-1][6] == result.total
    assert drops_markdown(ctx.t, result) == "数据中未发现问题：没有丢弃任何行，也没有警告。"
    assert "截断" in warnings_markdown(ctx.t, result, "truncate")


def test_the_problem_report_lists_drops_and_kept_warnings_with_file_and_line(tmp_path, demo_tokenizer):
    from gui.tabs.data import drops_markdown

    rows = [{"messages": None},
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": 7}]},
            {"messages": [{"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2"}]}]
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    res = build_mix(MixConfig(sources=[SourceConfig(path=str(path), name="d")]), demo_tokenizer)
    for lang, dropped, kept in (("en", "(dropped)", "(kept, warning)"), ("zh", "（已丢弃）", "（已保留，警告）")):
        text = drops_markdown(Ctx(lang).t, res)
        line_1 = next(line for line in text.splitlines() if "invalid field" in line)
        line_2 = next(line for line in text.splitlines() if "number as text" in line)
        assert "d.jsonl:1" in line_1 and "d.jsonl:2" in line_2
        assert (dropped in line_1 or dropped.replace("（", "(").replace("）", ")") in line_1)
        assert (kept in line_2 or kept.replace("（", "(").replace("）", ")") in line_2)


def test_preview_page_uses_the_training_mask(result, demo_tokenizer):
    from gui.tabs.data import preview_page

    ctx = Ctx()
    page_html, index = preview_page(ctx, result, demo_tokenizer, "chat_zh", 0, True, True)
    assert index == 0 and '<mark class="qt-train">' in page_html and "chat_zh" in page_html
    no_think, _ = preview_page(ctx, result, demo_tokenizer, "chat_zh", 0, True, False)
    assert no_think.split('<mark class="qt-train">', 1)[1][:40] != page_html.split('<mark class="qt-train">', 1)[1][:40]
    clamp_html, last = preview_page(ctx, result, demo_tokenizer, "*", 10_000, True, True)
    assert last == result.total - 1


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_preview_shows_a_preference_row_as_prompt_chosen_rejected(demo_tokenizer, lang):
    from core.data.render import render_preference
    from gui.tabs.data import preview_page

    ctx = Ctx(lang)
    res = build_mix(MixConfig(sources=[SourceConfig(path="samples/preference_zh_en")], shuffle=False), demo_tokenizer)
    page_html, index = preview_page(ctx, res, demo_tokenizer, "*", 0, True, True)
    pair = render_preference(res.train[0], demo_tokenizer)
    assert index == 0 and '<mark class="qt-chosen">' in page_html and '<mark class="qt-rejected">' in page_html
    for key in ("data.part.prompt", "data.part.chosen", "data.part.rejected"):
        assert ctx.t(key) in page_html
    chosen = page_html.split('<mark class="qt-chosen">', 1)[1].split("</mark>", 1)[0]
    assert chosen.replace('<span class="qt-special">', "").replace("</span>", "") == \
        pair.chosen.replace("<", "&lt;").replace(">", "&gt;")
    assert res.train[0].rejected.content in page_html


def test_preview_shows_a_prompt_row_with_its_reference_answer(demo_tokenizer):
    from gui.tabs.data import preview_page

    ctx = Ctx("zh")
    res = build_mix(MixConfig(sources=[SourceConfig(path="samples/math_prompts")], shuffle=False), demo_tokenizer)
    page_html, _ = preview_page(ctx, res, demo_tokenizer, "*", 1, True, True)
    row = res.train[1]
    assert ctx.t("data.part.answer") in page_html and '<mark class="qt-answer">' in page_html
    assert f'<mark class="qt-answer">{row.meta["expected_answer"]}</mark>' in page_html
    assert row.messages[-1].content in page_html and "提示" in page_html


def test_the_status_names_the_kind_of_mix(tmp_path, demo_tokenizer):
    from gui.app import AppContext
    from gui.tabs import data

    ctx = AppContext(runs_dir=tmp_path / "runs", demo=True, mixes_dir=tmp_path / "mixes")
    ctx.server["data.tokenizers"] = {"demo": demo_tokenizer}
    sources = [to_dict(SourceConfig(path="samples/preference_zh_en"))]
    settings = [7, 2048, "drop", False, 0, 0.0, True, "last_only", False, "auto"]
    status, *_rest = data.rebuild(ctx, sources, None, "demo", *settings)
    assert ctx.t("data.kind_report.preference") in status
    settings[-1] = "sft"
    status, *_rest = data.rebuild(ctx, sources, None, "demo", *settings)
    assert status.startswith("✗") and "preference_zh_en" in status and "kind: preference" in status


def test_histogram_has_a_trace_per_source_and_the_limit_line(result):
    from gui.tabs.data import histogram

    fig = histogram(Ctx(), result)
    assert [tr.name.split(" (")[0] for tr in fig.data] == ["math_reasoning", "chat_zh"]
    assert any(shape.x0 == result.config.max_seq_len for shape in fig.layout.shapes)


@pytest.mark.slow
@pytest.mark.e2e
def test_browser_preset_preview_and_save(app_server, page):  # noqa: F811 (fixtures)
    page.goto(app_server.url + "/en/")
    page.click("#tab-data-button")
    page.click("#data-preset-load")
    page.wait_for_function("document.querySelector('#data-status').innerText.includes('Mix ready')",
                           timeout=120_000)
    page.wait_for_selector("#data-preview mark.qt-train")
    assert "reasoning" in page.inner_text("#data-counts") and "chat" in page.inner_text("#data-counts")
    assert page.locator("#data-hist .js-plotly-plot, #data-hist .plotly").count() > 0
    # Untick "train the empty think block": the preview follows.
    page.click("#data-mask-think input")
    page.fill("#data-save-name textarea, #data-save-name input", "browser mix")
    page.click("#data-save")
    page.wait_for_function("document.querySelector('#data-save-status').innerText.includes('browser mix')",
                           timeout=120_000)
    page.screenshot(path=str(ARTIFACTS / "data_tab.png"), full_page=True)
    manifest = json.loads((app_server.mixes_dir / "browser mix" / "manifest.json").read_text())
    assert manifest["counts"] == {"reasoning": 39, "chat": 13}
    assert not page.external_requests
