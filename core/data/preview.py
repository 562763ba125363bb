"""What will really be trained: a rendered conversation with its trained tokens marked.

The text and the mask come from :func:`core.data.render.render` - the very function the trainer
calls - so the preview cannot disagree with training.
"""

from __future__ import annotations

import html

from core.data.conversation import Conversation
from core.data.render import MaskOptions, Rendered, masked_segments, render

PREVIEW_CSS = (
    ".qt-preview{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:13px;"
    "white-space:pre-wrap;word-break:break-word;line-height:1.5;padding:8px;border-radius:6px;"
    "border:1px solid #8884;max-height:520px;overflow:auto}"
    ".qt-preview .qt-train{background:#16a34a33;color:inherit;border-bottom:2px solid #16a34a;border-radius:2px}"
    ".qt-preview .qt-ctx{opacity:.75}"
    ".qt-preview .qt-special{color:#7c3aed;font-weight:600}"
    ".qt-meta{font-size:12px;opacity:.8;margin:4px 0}"
)
SPECIAL_TOKENS = ("<|im_start|>", "<|im_end|>", "<think>", "</think>", "<tool_call>", "</tool_call>",
                  "<tool_response>", "</tool_response>")


def render_preview(conv: Conversation, tokenizer, *, options: MaskOptions = MaskOptions(),
                   max_len: int | None = None, truncate: bool = False) -> Rendered:
    return render(conv, tokenizer, max_len=max_len, truncate=truncate, options=options)


def _mark_specials(escaped: str) -> str:
    for tok in SPECIAL_TOKENS:
        esc = html.escape(tok)
        escaped = escaped.replace(esc, f'<span class="qt-special">{esc}</span>')
    return escaped


def preview_html(rendered: Rendered, *, title: str = "", legend: str = "") -> str:
    """HTML of the rendered text: trained runs in a green ``<mark class="qt-train">``."""
    parts = []
    for piece, trained in masked_segments(rendered):
        body = _mark_specials(html.escape(piece))
        cls = "qt-train" if trained else "qt-ctx"
        tag = "mark" if trained else "span"
        parts.append(f'<{tag} class="{cls}">{body}</{tag}>')
    if rendered.truncated:
        parts.append('<span class="qt-special"> [... truncated at max_seq_len]</span>')
    head = f'<div class="qt-meta">{html.escape(title)}</div>' if title else ""
    foot = f'<div class="qt-meta">{html.escape(legend)}</div>' if legend else ""
    return f'<style>{PREVIEW_CSS}</style>{head}<div class="qt-preview">{"".join(parts)}</div>{foot}'


def preview_text(rendered: Rendered, *, color: bool = False) -> str:
    """Plain-text preview for the CLI: trained runs between ⟦ and ⟧ (or green with ``color``)."""
    out = []
    for piece, trained in masked_segments(rendered):
        if trained:
            out.append(f"\033[32m{piece}\033[0m" if color else f"⟦{piece}⟧")
        else:
            out.append(f"\033[2m{piece}\033[0m" if color else piece)
    if rendered.truncated:
        out.append(" [... truncated at max_seq_len]")
    return "".join(out)
