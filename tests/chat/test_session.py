"""The browser-kept chat state and the tabs' build (nothing loaded at start-up)."""

from __future__ import annotations

from core.chat import session


def test_pane_histories_are_separate_and_hold_answers_only():
    state = session.new_state()
    replies = {"base": {"reasoning": "r1", "answer": "Hello from base"},
               "tuned": {"reasoning": "r2", "answer": "Hello from tuned", "finish": "stop"}}
    state = session.add_turn(state, "Hi", replies)
    msgs = session.pane_messages(state["turns"], "tuned", "And now?")
    assert msgs == [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello from tuned"},
                    {"role": "user", "content": "And now?"}]
    assert session.pane_messages(state["turns"], "base", "x")[1]["content"] == "Hello from base"
    assert state["turns"][0]["tuned"]["finish"] == "stop"


def test_state_is_capped_and_damaged_state_is_replaced():
    state = session.new_state()
    for i in range(session.MAX_TURNS + 5):
        state = session.add_turn(state, f"q{i}", {"base": {"answer": "a" * (session.MAX_CHARS + 10)}})
    assert len(state["turns"]) == session.MAX_TURNS and state["turns"][0]["user"] == "q5"
    assert len(state["turns"][-1]["base"]["answer"]) == session.MAX_CHARS
    assert session.normalise(None) == session.new_state()
    assert session.normalise({"version": 99}) == session.new_state()
    bad = dict(session.new_state(), settings={"temperature": "hot"}, turns=[{"user": "ok"}, "junk", {"x": 1}],
               target="runs/a")
    fixed = session.normalise(bad)
    assert fixed["settings"] == session.new_state()["settings"] and fixed["turns"] == [{"user": "ok"}]
    assert fixed["target"] == "runs/a"


def test_tabs_build_without_loading_a_model(tmp_path):
    from gui.app import build_app

    app = build_app(runs_dir=tmp_path / "runs", demo=True, lang="zh")
    ctx = app.qt_ctx
    assert ctx.server["chat.models"].current is None  # the server starts without a model in memory
    assert ctx.server["evaluate.jobs"].models is ctx.server["chat.models"]  # one model cache for both tabs
    ids = {getattr(b, "elem_id", None) for b in app.blocks.values()}
    assert {"chat-input", "chat-send", "chat-base", "chat-tuned", "chat-run", "eval-run", "eval-start",
            "eval-table", "eval-chart", "export-start", "serve-command", "serve-snippet"} <= ids


def test_browser_secret_is_created_once_and_private(tmp_path):
    import stat

    first = session.browser_secret(tmp_path)
    assert len(first) >= 16 and session.browser_secret(tmp_path) == first
    mode = stat.S_IMODE((tmp_path / "browser_state.key").stat().st_mode)
    assert mode == 0o600
