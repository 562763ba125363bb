"""Conversation -> text (the tokenizer's own chat template) -> token ids + loss mask.

The loss mask is computed here and only here: the trainer and the Data tab's preview both call
:func:`render`. It works from the rendered text, not from ``{% generation %}`` tags, so it is right
for real Qwen3 tokenizers (whose template has no such tags) as well as for the demo model:
every ``<|im_start|>assistant\\n ... <|im_end|>`` span is a reply; the header is not trained, the
reply and its closing ``<|im_end|>`` are. Tool responses (rendered as user turns) are never trained.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from core.data.conversation import Conversation

ASSISTANT_HEADER = "<|im_start|>assistant\n"
END = "<|im_end|>"
EMPTY_THINK = "<think>\n\n</think>\n\n"


@dataclass(frozen=True)
class MaskOptions:
    assistant_only: bool = True  # False: every token is trained
    train_empty_think: bool = True  # train the empty think block of non-reasoning replies


@dataclass
class Rendered:
    text: str
    input_ids: list[int]
    mask: list[int]  # 1 where the token is trained
    offsets: list[tuple[int, int]]  # character span of each token in ``text``
    truncated: bool = False

    @property
    def n_tokens(self) -> int:
        return len(self.input_ids)

    @property
    def n_trained(self) -> int:
        return sum(self.mask)


def render_text(conv: Conversation, tokenizer, *, add_generation_prompt: bool = False,
                enable_thinking: bool | None = None) -> str:
    kwargs = {}
    if enable_thinking is not None:
        kwargs["enable_thinking"] = enable_thinking
    return tokenizer.apply_chat_template(
        conv.template_messages(), tools=conv.tools or None, tokenize=False,
        add_generation_prompt=add_generation_prompt, **kwargs,
    )


@functools.lru_cache(maxsize=8)
def _fast_template(template: str):
    """The chat template compiled as transformers compiles it (same sandbox, filters, extensions),
    with the sandbox's per-access safety checks memoised. Those checks depend only on the object's
    type and the attribute name, so the decisions - and the rendered text - are unchanged; rendering
    is about twice as fast. Returns None when transformers' internals differ from what this expects."""
    try:
        from jinja2.sandbox import ImmutableSandboxedEnvironment
        from transformers.utils.chat_template_utils import _compile_jinja_template
    except ImportError:
        return None
    compiled = _compile_jinja_template(template)
    if type(compiled.environment) is not ImmutableSandboxedEnvironment:
        return None
    env = compiled.environment.overlay()
    check = env.is_safe_attribute
    sandbox_getattr = env.getattr
    decisions: dict = {}

    def is_safe_attribute(obj, attr, value):
        key = (type(obj), attr)
        if key not in decisions:
            decisions[key] = check(obj, attr, value)
        return decisions[key]

    def getattr_(obj, attribute):
        # The sandbox resolves ``message.role`` on a dict by failing getattr, then indexing; a key
        # that is not a dict attribute ends there, so go straight to it.
        if type(obj) is dict and type(attribute) is str and attribute in obj and not hasattr(dict, attribute):
            return obj[attribute]
        return sandbox_getattr(obj, attribute)

    env.is_safe_attribute = is_safe_attribute
    env.getattr = getattr_
    return env.from_string(template)


def _template_renderer(tokenizer, with_tools: bool):
    """A function conversation -> text that renders exactly what ``apply_chat_template`` renders,
    without its per-call overhead: the same template and variables (the tokenizer's special tokens),
    compiled once. Falls back to apply_chat_template when transformers' internals have moved."""
    template = tokenizer.get_chat_template(None, [{}] if with_tools else None)
    compiled = _fast_template(template)
    if compiled is None:
        return lambda conv: render_text(conv, tokenizer)
    variables = dict(tokenizer.special_tokens_map)

    def render_one(conv: Conversation) -> str:
        return compiled.render(messages=conv.template_messages(), tools=conv.tools or None, documents=None,
                               add_generation_prompt=False, **variables)

    return render_one


def render_texts(convs: list[Conversation], tokenizer) -> list[str]:
    """The training text of many conversations: the same text as :func:`render_text`, faster."""
    plain = with_tools = None
    out = []
    for conv in convs:
        if conv.tools:
            with_tools = with_tools or _template_renderer(tokenizer, True)
            out.append(with_tools(conv))
        else:
            plain = plain or _template_renderer(tokenizer, False)
            out.append(plain(conv))
    return out


def count_tokens(texts: list[str], tokenizer) -> list[int]:
    """Token counts of texts (no special tokens added), batched in the fast tokenizer's Rust core
    without building offsets or Python id lists."""
    backend = getattr(tokenizer, "_tokenizer", None)
    if backend is not None and hasattr(backend, "encode_batch_fast"):
        return [len(e) for e in backend.encode_batch_fast(texts, add_special_tokens=False)]
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def trained_char_spans(text: str, options: MaskOptions = MaskOptions()) -> list[tuple[int, int]]:
    """Character ranges [start, end) of ``text`` whose tokens are trained."""
    if not options.assistant_only:
        return [(0, len(text))]
    spans = []
    pos = 0
    while True:
        start = text.find(ASSISTANT_HEADER, pos)
        if start < 0:
            break
        body = start + len(ASSISTANT_HEADER)
        end = text.find(END, body)
        # A reply cut off by truncation still trains what is there.
        stop = len(text) if end < 0 else end + len(END)
        if not options.train_empty_think and text.startswith(EMPTY_THINK, body):
            body += len(EMPTY_THINK)
        if stop > body:
            spans.append((body, stop))
        if end < 0:
            break
        pos = stop
    return spans


def mask_from_offsets(offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[int]:
    """1 for each token whose first character lies in a trained span (spans are sorted)."""
    mask = [0] * len(offsets)
    j = 0
    for i, (s, _e) in enumerate(offsets):
        while j < len(spans) and spans[j][1] <= s:
            j += 1
        if j < len(spans) and spans[j][0] <= s < spans[j][1]:
            mask[i] = 1
    return mask


def render(conv: Conversation, tokenizer, *, max_len: int | None = None, truncate: bool = False,
           options: MaskOptions = MaskOptions()) -> Rendered:
    """Render one conversation for training. Over-long rows are truncated only if ``truncate``."""
    return render_batch([conv], tokenizer, max_len=max_len, truncate=truncate, options=options)[0]


def render_batch(convs: list[Conversation], tokenizer, *, max_len: int | None = None,
                 truncate: bool = False, options: MaskOptions = MaskOptions()) -> list[Rendered]:
    """Render many conversations; tokenization runs batched in the fast tokenizer."""
    texts = render_texts(convs, tokenizer)
    enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    out = []
    for text, ids, offsets in zip(texts, enc["input_ids"], enc["offset_mapping"]):
        offsets = [tuple(o) for o in offsets]
        mask = mask_from_offsets(offsets, trained_char_spans(text, options))
        cut = bool(max_len and truncate and len(ids) > max_len)
        if cut:
            ids, mask, offsets = ids[:max_len], mask[:max_len], offsets[:max_len]
        out.append(Rendered(text=text, input_ids=list(ids), mask=mask, offsets=offsets, truncated=cut))
    return out


def masked_segments(rendered: Rendered) -> list[tuple[str, bool]]:
    """The text cut into (piece, trained) runs: what the preview highlights."""
    segments: list[tuple[str, bool]] = []
    text = rendered.text
    last_end = 0
    for (_s, e), m in zip(rendered.offsets, rendered.mask):
        # Byte-level tokens of one multi-byte character share its offsets: emit each character once.
        piece = text[last_end:e] if e > last_end else ""
        last_end = max(last_end, e)
        if not piece:
            continue
        if segments and segments[-1][1] == bool(m):
            segments[-1] = (segments[-1][0] + piece, bool(m))
        else:
            segments.append((piece, bool(m)))
    return segments
