"""Final answers: find them in a reply or a reference row, and compare them after normalisation.

A row carries a final answer when its ``meta["expected_answer"]`` is set (OpenMathReasoning rows keep
it there) or when its reference reply has a ``\\boxed{...}``. A model's answer is the last
``\\boxed{...}`` of its reply; without one, an "answer: X" line, then the last number, then the whole
(short) reply. Comparison is exact after normalisation (LaTeX wrappers, spaces, thousands separators,
case) or numeric (``\\frac{3}{4}`` equals ``0.75``; ``50\\%`` equals ``50``).
"""

from __future__ import annotations

import re

from core.data.conversation import Conversation

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?")
_ANSWER_LINE = re.compile(r"(?:final answer|answer)\s*(?:is|:|：|=)\s*(.+)", re.IGNORECASE)


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` or ``\\fbox{...}`` (braces balanced, spaces allowed
    before the brace), or None. An unbalanced last box means the reply was cut off inside it: None,
    not an earlier box, since the model's final answer is the one it did not finish."""
    starts = list(_BOXED.finditer(text))
    if not starts:
        return None
    i = starts[-1].end()
    depth, begin = 1, i
    while i < len(text):
        ch = text[i]
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[begin:i].strip()
        i += 1
    return None


def expected_answer(conv: Conversation) -> str | None:
    """The row's final answer: meta["expected_answer"], else the reference reply's last \\boxed{}."""
    value = conv.meta.get("expected_answer") if conv.meta else None
    if value is not None and str(value).strip():
        return str(value).strip()
    replies = [m for m in conv.messages if m.role == "assistant"]
    if replies:
        return last_boxed(replies[-1].content)
    return None


def extract_answer(reply_answer: str) -> str | None:
    """The model's final answer from the answer part of its reply (reasoning already removed)."""
    text = reply_answer.strip()
    if not text:
        return None
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    lines = _ANSWER_LINE.findall(text)
    if lines:
        return lines[-1].strip().rstrip(".。")
    numbers = _NUMBER.findall(text)
    if numbers:
        return numbers[-1]
    return text if len(text) <= 60 else None


def _unwrap(s: str, command: str) -> str:
    """``\\text{abc}`` -> ``abc`` for every occurrence of ``command``."""
    while True:
        start = s.find(command + "{")
        if start < 0:
            return s
        i = start + len(command) + 1
        depth = 1
        while i < len(s) and depth:
            depth += {"{": 1, "}": -1}.get(s[i], 0)
            i += 1
        inner = s[start + len(command) + 1:i - 1] if depth == 0 else s[start + len(command) + 1:]
        s = s[:start] + inner + s[i:]


def normalize_answer(answer: str) -> str:
    s = answer.strip()
    boxed = last_boxed(s)
    if boxed is not None:
        s = boxed
    s = s.replace("$", "").replace("\\!", "").replace("\\,", "").replace("\\;", "").replace("\\ ", "")
    s = s.replace("\\left", "").replace("\\right", "").replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    for cmd in ("\\text", "\\textbf", "\\mathrm", "\\mbox", "\\mathbf"):
        s = _unwrap(s, cmd)
    s = s.replace("^\\circ", "").replace("^{\\circ}", "").replace("°", "").replace("\\%", "%")
    s = re.sub(r"^[a-zA-Z]\s*=\s*", "", s)  # "x = 5" -> "5"
    s = re.sub(r"(\d),(?=\d{3}(?!\d))", r"\1", s)  # 1,000 -> 1000
    s = s.rstrip(".。").strip()
    s = re.sub(r"\s+", "", s).lower()
    return s


def to_number(s: str) -> float | None:
    s = s.rstrip("%")
    m = re.fullmatch(r"\\frac\{(-?[\d.]+)\}\{(-?[\d.]+)\}", s) or re.fullmatch(r"(-?[\d.]+)/(-?[\d.]+)", s)
    try:
        if m:
            return float(m.group(1)) / float(m.group(2))
        neg = re.fullmatch(r"-\\frac\{([\d.]+)\}\{([\d.]+)\}", s)
        if neg:
            return -float(neg.group(1)) / float(neg.group(2))
        return float(s)
    except (ValueError, ZeroDivisionError):
        return None


def answers_match(predicted: str | None, expected: str) -> bool:
    if predicted is None:
        return False
    a, b = normalize_answer(predicted), normalize_answer(expected)
    if a == b:
        return True
    x, y = to_number(a), to_number(b)
    if x is None or y is None:
        return False
    return abs(x - y) <= 1e-6 * max(1.0, abs(y))
