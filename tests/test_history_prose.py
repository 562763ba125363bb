"""Comments, docstrings and docs say why a rule holds, never when it came about: the project's
history ("as before", "call 7", "session 2") means nothing to a reader of the code. Benchmark record
ids in data files, and call numbers used as labels of measurements in docs, are fine."""

from __future__ import annotations

import re

from tests.conftest import ROOT

# In code any of these is history. Docs may label a measurement "call 7", so only the rest apply.
CODE_ONLY = re.compile(r"\bcalls? [0-9]|\bsessions? [0-9]", re.IGNORECASE)
ANYWHERE = re.compile(r"\bas before\b|\bthe issue\b|\bpreviously\b|\bnow chooses\b", re.IGNORECASE)


def _hits(paths, patterns):
    out = []
    for path in paths:
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if any(p.search(line) for p in patterns) and '"call":' not in line:
                out.append(f"{path.relative_to(ROOT)}:{lineno}: {line.strip()}")
    return out


def test_code_and_docs_do_not_explain_themselves_by_history():
    code = [p for folder in ("core", "gui") for p in (ROOT / folder).rglob("*") if p.suffix in (".py", ".yaml")]
    docs = sorted((ROOT / "docs").glob("*.md"))
    assert _hits(code, [CODE_ONLY, ANYWHERE]) == []
    assert _hits(docs, [ANYWHERE]) == []
