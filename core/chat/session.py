"""The chat panes' conversation as plain data, so the browser can keep it across page reloads.

State (a JSON-able dict the GUI stores in the browser)::

    {"version": 1, "target": "runs/x", "base_model": "", "system": "", "settings": {...SamplingConfig...},
     "turns": [{"user": "...", "base": {"reasoning", "answer"}, "tuned": {"reasoning", "answer"}}, ...]}

Each pane keeps its own history: a pane's next prompt holds the user turns and *that pane's* past
answers, never its reasoning (core.chat.thinking applies the same rule once more when it builds
the prompt).
"""

from __future__ import annotations

import dataclasses

from core.config import SamplingConfig
from core.settings import ConfigError, from_dict

VERSION = 1
MAX_TURNS = 50  # older turns are dropped from the stored state (the browser's storage is small)
MAX_CHARS = 20000  # per stored reasoning / answer


def new_state() -> dict:
    return {"version": VERSION, "target": "", "base_model": "", "system": "",
            "settings": dataclasses.asdict(SamplingConfig()), "turns": []}


def normalise(state) -> dict:
    """A usable state from whatever the browser sent back (missing, old or damaged: a fresh one)."""
    if not isinstance(state, dict) or state.get("version") != VERSION:
        return new_state()
    out = new_state()
    for key in ("target", "base_model", "system"):
        if isinstance(state.get(key), str):
            out[key] = state[key]
    try:
        out["settings"] = dataclasses.asdict(sampling_config(state.get("settings")))
    except ConfigError:
        pass  # settings from an older version: keep the defaults rather than fail the page
    turns = state.get("turns")
    if isinstance(turns, list):
        out["turns"] = [t for t in turns if isinstance(t, dict) and isinstance(t.get("user"), str)][-MAX_TURNS:]
    return out


def sampling_config(settings) -> SamplingConfig:
    if not isinstance(settings, dict):
        return SamplingConfig()
    known = {f.name for f in dataclasses.fields(SamplingConfig)}
    return from_dict(SamplingConfig, {k: v for k, v in settings.items() if k in known})


def pane_messages(turns: list[dict], pane: str, user: str) -> list[dict]:
    """The messages ``pane`` answers next: past user turns with this pane's answers, then ``user``."""
    msgs = []
    for turn in turns:
        reply = turn.get(pane) or {}
        msgs.append({"role": "user", "content": turn["user"]})
        msgs.append({"role": "assistant", "content": reply.get("answer", "")})
    msgs.append({"role": "user", "content": user})
    return msgs


def add_turn(state: dict, user: str, replies: dict[str, dict]) -> dict:
    """A new state with the turn appended (and the oldest dropped past MAX_TURNS)."""
    turn = {"user": user[:MAX_CHARS]}
    for pane, reply in replies.items():
        turn[pane] = {"reasoning": (reply.get("reasoning") or "")[:MAX_CHARS],
                      "answer": (reply.get("answer") or "")[:MAX_CHARS]}
        if reply.get("finish"):
            turn[pane]["finish"] = str(reply["finish"])
    out = dict(state)
    out["turns"] = (list(state.get("turns") or []) + [turn])[-MAX_TURNS:]
    return out


def browser_secret(cache_root=None) -> str:
    """The key the browser-kept state is encrypted with, stable across server restarts and shared by
    every language's page, so the conversation survives both. Created once in the cache folder."""
    import os
    import secrets
    from pathlib import Path

    from core.demo import default_cache_root

    path = Path(cache_root) if cache_root else default_cache_root()
    path = path / "browser_state.key"
    try:
        text = path.read_text(encoding="utf-8").strip()
        if len(text) >= 16:
            return text
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(24)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(key + "\n")
    os.replace(tmp, path)
    return path.read_text(encoding="utf-8").strip()
