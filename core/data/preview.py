"""What will really be trained: a rendered conversation with its trained tokens marked.

The text and the mask come from :func:`core.data.render.render` - the very function the trainer
calls - so the preview cannot disagree with training. Preference rows are shown as the prompt, the
chosen and the rejected reply (:func:`core.data.render.render_preference`, what DPO / ORPO train
on); prompt-set rows as the prompt the model answers and the reference answer its reply is checked
against (:func:`core.data.render.render_prompt`, what GRPO generates from).
"""

from __future__ import annotations

import html

from core.data.conversation import Conversation
from core.data.render import MaskOptions, PreferenceText, Rendered, masked_segments, render

PREVIEW_CSS = (
    ".qt-preview{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:13px;"
    "white-space:pre-wrap;word-break:break-word;line-height:1.5;padding:8px;border-radius:6px;"
    "border:1px solid #8884;max-height:520px;overflow:auto}"
    ".qt-preview .qt-train{background:#16a34a33;color:inherit;border-bottom:2px solid #16a34a;border-radius:2px}"
    ".qt-preview .qt-ctx{opacity:.75}"
    ".qt-preview .qt-special{color:#7c3aed;font-weight:600}"
    ".qt-meta{font-size:12px;opacity:.8;margin:4px 0}"
    ".qt-part{font-size:12px;font-weight:600;margin:8px 0 2px}"
    ".qt-preview .qt-chosen{background:#16a34a33;border-bottom:2px solid #16a34a;border-radius:2px}"
    ".qt-preview .qt-rejected{background:#dc262633;border-bottom:2px solid #dc2626;border-radius:2px}"
    ".qt-preview .qt-answer{background:#2563eb33;border-bottom:2px solid #2563eb;border-radius:2px}"
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


def _block(label: str, text: str, cls: str) -> str:
    body = _mark_specials(html.escape(text))
    inner = f'<mark class="{cls}">{body}</mark>' if cls != "qt-ctx" else f'<span class="qt-ctx">{body}</span>'
    return f'<div class="qt-part">{html.escape(label)}</div><div class="qt-preview">{inner}</div>'


def preference_html(pair: PreferenceText, labels: tuple[str, str, str], *, title: str = "",
                    legend: str = "") -> str:
    """HTML of a preference row: the prompt as context, the chosen reply in green, the rejected one
    in red. ``labels`` name the three parts (the GUI passes them in the page's language)."""
    head = f'<div class="qt-meta">{html.escape(title)}</div>' if title else ""
    foot = f'<div class="qt-meta">{html.escape(legend)}</div>' if legend else ""
    return (f"<style>{PREVIEW_CSS}</style>{head}{_block(labels[0], pair.prompt, 'qt-ctx')}"
            f"{_block(labels[1], pair.chosen, 'qt-chosen')}{_block(labels[2], pair.rejected, 'qt-rejected')}{foot}")


def prompt_html(prompt: str, answer: str, labels: tuple[str, str], *, title: str = "", legend: str = "") -> str:
    """HTML of a prompt-set row: the prompt the model answers and the reference answer."""
    head = f'<div class="qt-meta">{html.escape(title)}</div>' if title else ""
    foot = f'<div class="qt-meta">{html.escape(legend)}</div>' if legend else ""
    return (f"<style>{PREVIEW_CSS}</style>{head}{_block(labels[0], prompt, 'qt-ctx')}"
            f"{_block(labels[1], answer, 'qt-answer')}{foot}")


def preference_text(pair: PreferenceText, *, color: bool = False) -> str:
    """Plain-text preview of a preference row for the CLI."""
    def part(name: str, text: str, code: str) -> str:
        return f"[{name}]\n" + (f"\033[{code}m{text}\033[0m" if color else text)

    return "\n".join((part("prompt", pair.prompt, "2"), part("chosen", pair.chosen, "32"),
                      part("rejected", pair.rejected, "31")))


def prompt_text(prompt: str, answer: str, *, color: bool = False) -> str:
    """Plain-text preview of a prompt-set row for the CLI."""
    shown = f"\033[34m{answer}\033[0m" if color else answer
    return f"[prompt]\n{prompt}\n[reference answer] {shown}"
