"""One report of every problem a mix met, per source: what was dropped and what was kept with a
warning, counted by kind with the first few file:line examples, so a user fixes a file once.

``problem_rows`` gives table rows (the Data tab, ``core mix --json``); ``problems_text`` and
``problems_markdown`` the same for a terminal and for Markdown.
"""

from __future__ import annotations

EXAMPLES_SHOWN = 3


def problem_rows(result) -> list[dict]:
    """One row per (source, kind): {"source", "kind", "action", "count", "examples"}; drops first,
    then kept-with-warning, each by count."""
    rows = []
    for s in result.sources:
        for action, table in (("dropped", s.drops), ("kept", s.notices)):
            for kind, entry in sorted(table.items(), key=lambda kv: -kv[1]["count"]):
                rows.append({"source": s.name, "kind": kind, "action": action, "count": entry["count"],
                             "examples": list(entry["examples"][:EXAMPLES_SHOWN])})
        for w in s.warnings:
            rows.append({"source": s.name, "kind": "file problem", "action": "skipped", "count": 1, "examples": [w]})
        lost = s.reasoning or {}
        if lost.get("rows"):
            action = {"last_only": "kept", "split": "split", "mask_earlier": "no loss"}.get(lost.get("mode"), "kept")
            rows.append({"source": s.name, "kind": "reasoning of earlier turns left out by the template",
                         "action": action, "count": lost["rows"],
                         "examples": [f"{lost['replies']} replies in {lost['rows']} rows "
                                      f"(reasoning_turns: {lost.get('mode')}; see docs/data.md)"]})
    return rows


def problems_text(result) -> str:
    """Plain-text report for the CLI ('' when there is nothing to report)."""
    lines = []
    for r in problem_rows(result):
        verb = {"dropped": "dropped", "kept": "kept, warning", "skipped": "file skipped"}.get(r["action"],
                                                                                              r["action"])
        lines.append(f"  {r['source']}: {r['kind']} x{r['count']} ({verb})")
        lines += [f"      {e}" for e in r["examples"]]
    return ("problems found in the data:\n" + "\n".join(lines)) if lines else ""


def _md(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def problems_markdown(result) -> str:
    """Markdown table of :func:`problem_rows` ('' when there is nothing to report)."""
    rows = problem_rows(result)
    if not rows:
        return ""
    out = ["| source | problem | action | rows | first examples |", "| --- | --- | --- | ---: | --- |"]
    for r in rows:
        out.append(f"| {_md(r['source'])} | {_md(r['kind'])} | {r['action']} | {r['count']} | "
                   f"{'<br>'.join(_md(e) for e in r['examples'])} |")
    return "\n".join(out)
