"""Conversation -> text (the tokenizer's own chat template) -> token ids + loss mask.

The loss mask is computed here and only here: the trainer and the Data tab's preview both call
:func:`render`. It does not rely on ``{% generation %}`` tags (real Qwen3 templates have none): the
k-th ``<|im_start|>assistant\\n ... <|im_end|>`` span of the rendered text is the conversation's
k-th assistant turn. Texts that quote those markers (a user asking about ChatML) are swapped for
placeholders while the spans are located, so quoted markers never become trained tokens. The
header is not trained; the reply and its closing ``<|im_end|>`` are, unless the turn is marked
``loss=False``. Tool responses (rendered as user turns) are never trained.
"""

from __future__ import annotations

import functools
import re
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


def _template_renderer(tokenizer, with_tools: bool, *, add_generation_prompt: bool = False,
                       enable_thinking: bool | None = None):
    """A function conversation -> text that renders exactly what ``apply_chat_template`` renders,
    without its per-call overhead: the same template and variables (the tokenizer's special tokens),
    compiled once. Falls back to apply_chat_template when transformers' internals have moved."""
    template = tokenizer.get_chat_template(None, [{}] if with_tools else None)
    compiled = _fast_template(template)
    if compiled is None:
        return lambda conv: render_text(conv, tokenizer, add_generation_prompt=add_generation_prompt,
                                        enable_thinking=enable_thinking)
    variables = dict(tokenizer.special_tokens_map)
    if enable_thinking is not None:
        variables["enable_thinking"] = enable_thinking

    def render_one(conv: Conversation) -> str:
        return compiled.render(messages=conv.template_messages(), tools=conv.tools or None, documents=None,
                               add_generation_prompt=add_generation_prompt, **variables)

    return render_one


def render_texts(convs: list[Conversation], tokenizer, *, add_generation_prompt: bool = False,
                 enable_thinking: bool | None = None) -> list[str]:
    """The training text of many conversations: the same text as :func:`render_text`, faster."""
    renderers: dict[bool, object] = {}
    out = []
    for conv in convs:
        tools = bool(conv.tools)
        if tools not in renderers:
            renderers[tools] = _template_renderer(tokenizer, tools, add_generation_prompt=add_generation_prompt,
                                                  enable_thinking=enable_thinking)
        out.append(renderers[tools](conv))
    return out


# ------------------------------------------------------------------ preference and prompt rows
@dataclass(frozen=True)
class PreferenceText:
    """A preference row as text: ``prompt + chosen`` and ``prompt + rejected`` are each exactly the
    training rendering of that reply after the prompt."""

    prompt: str
    chosen: str
    rejected: str


class RenderError(ValueError):
    """A row cannot be rendered the way its stage needs (no rejected reply, no user turn to answer)."""


def _prompt_part(conv: Conversation) -> Conversation:
    """The row without its reply: messages up to the last user or tool turn."""
    msgs = conv.messages
    end = len(msgs)
    while end and msgs[end - 1].role == "assistant":
        end -= 1
    if not end or msgs[end - 1].role not in ("user", "tool"):
        raise RenderError(f"{conv.origin or 'a row'}: no user turn for the model to answer")
    return Conversation(messages=msgs[:end], tools=conv.tools, source=conv.source, origin=conv.origin,
                        meta=conv.meta)


def _reply_after(full: str, prompt: str, conv: Conversation, which: str) -> str:
    if not full.startswith(prompt):
        raise RenderError(f"{conv.origin or 'a row'}: the chat template renders the {which} reply's "
                          "conversation with a different prompt, so it cannot be split into prompt + reply")
    return full[len(prompt):]


def _has_reasoning(m) -> bool:
    # Qwen3's template also takes reasoning written inline as <think>...</think> in the content.
    return bool(m.reasoning) or (m.reasoning is None and "</think>" in m.content)


def render_preference(conv: Conversation, tokenizer) -> PreferenceText:
    """A preference row (``conv.messages[-1]`` the chosen reply, ``conv.rejected`` the other one) as
    prompt / chosen / rejected text in the tokenizer's chat template.

    The prompt is the template of the messages before the reply with the generation prompt. Qwen3
    renders a final reply without reasoning after an empty think block, and the generation prompt
    with ``enable_thinking=False`` ends with that same block; so when neither reply has reasoning the
    block belongs to the prompt (each reply is its content + ``<|im_end|>\n``), and when either has,
    the prompt stops at ``<|im_start|>assistant\n`` and each reply starts with its own think block
    (the empty one for a reply without reasoning). Either way ``prompt + chosen`` is the SFT
    rendering of the chosen conversation and ``prompt + rejected`` that of the rejected one."""
    if conv.rejected is None:
        raise RenderError(f"{conv.origin or 'a row'}: not a preference row (no rejected reply)")
    chosen = conv.messages[-1] if conv.messages else None
    if chosen is None or chosen.role != "assistant" or conv.rejected.role != "assistant":
        raise RenderError(f"{conv.origin or 'a row'}: a preference row ends with the chosen assistant reply "
                          "and its rejected reply is an assistant turn")
    prompt_conv = _prompt_part(Conversation(messages=conv.messages[:-1], tools=conv.tools, origin=conv.origin))
    if len(prompt_conv.messages) != len(conv.messages) - 1:
        raise RenderError(f"{conv.origin or 'a row'}: the chosen reply must follow a user or tool turn")
    thinking = _has_reasoning(chosen) or _has_reasoning(conv.rejected)
    prompt, full_chosen, full_rejected = (
        render_texts([prompt_conv], tokenizer, add_generation_prompt=True, enable_thinking=thinking)[0],
        *render_texts([conv, conv.with_reply(conv.rejected)], tokenizer))
    return PreferenceText(prompt=prompt, chosen=_reply_after(full_chosen, prompt, conv, "chosen"),
                          rejected=_reply_after(full_rejected, prompt, conv, "rejected"))


def render_prompt(conv: Conversation, tokenizer, *, thinking: bool = True) -> str:
    """The prompt of a row for generation (GRPO rollouts, chat): its messages up to the last user or
    tool turn (a trailing reply is left out) with the generation prompt. ``thinking=False`` ends it
    with Qwen3's empty think block, so the model answers without reasoning."""
    return render_texts([_prompt_part(conv)], tokenizer, add_generation_prompt=True,
                        enable_thinking=None if thinking else False)[0]


def count_tokens(texts: list[str], tokenizer) -> list[int]:
    """Token counts of texts (no special tokens added), batched in the fast tokenizer's Rust core
    without building offsets or Python id lists."""
    backend = getattr(tokenizer, "_tokenizer", None)
    if backend is not None and hasattr(backend, "encode_batch_fast"):
        return [len(e) for e in backend.encode_batch_fast(texts, add_special_tokens=False)]
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


_MARKERS = ("<|im_start|>", "<|im_end|>")
_PH_OPEN, _PH_CLOSE = "\ue000", "\ue001"  # private-use code points: a placeholder no data is built from


class MaskError(ValueError):
    """The trained spans of a conversation cannot be told apart from its other text."""


def _has_marker(value) -> bool:
    if isinstance(value, str):
        return "<|im_" in value and any(m in value for m in _MARKERS)
    if isinstance(value, dict):
        return any(_has_marker(k) or _has_marker(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_marker(v) for v in value)
    return False


def _skeleton(conv: Conversation) -> tuple[Conversation, list[tuple[str, str, str]]] | None:
    """A copy of ``conv`` whose texts that quote chat markers are replaced by unique placeholders,
    so the rendered skeleton's markers are exactly the template's own. Returns (copy, [(placeholder,
    text as rendered verbatim, text as rendered inside tojson)]), or None when nothing quotes a marker."""
    import copy
    import json

    if not any(_has_marker(m.content) or _has_marker(m.reasoning) or
               (m.tool_calls and _has_marker([t.arguments for t in m.tool_calls])) for m in conv.messages) \
            and not (conv.tools and _has_marker(conv.tools)):
        return None
    subs: list[tuple[str, str, str]] = []

    def place(text: str) -> str:
        if not isinstance(text, str) or not any(mk in text for mk in _MARKERS):
            return text
        # Keep the edges the template looks at (strip, startswith('<tool_response>')) unchanged.
        core = text.strip()
        lead = text[: len(text) - len(text.lstrip())]
        trail = text[len(text.rstrip()):]
        for tag in ("<tool_response>",):
            if core.startswith(tag):
                lead, core = lead + tag, core[len(tag):]
        for tag in ("</tool_response>",):
            if core.endswith(tag):
                core, trail = core[: -len(tag)], tag + trail
        ph = f"{_PH_OPEN}{len(subs)}{_PH_CLOSE}"
        subs.append((ph, core, json.dumps(core, ensure_ascii=False)[1:-1]))
        return lead + ph + trail

    def walk(value):
        if isinstance(value, str):
            return place(value)
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        return value

    sk = copy.deepcopy(conv)
    for m in sk.messages:
        m.content = place(m.content)
        if m.reasoning:
            m.reasoning = place(m.reasoning)
        for t in m.tool_calls:
            t.arguments = walk(t.arguments)
    if sk.tools:
        sk.tools = walk(sk.tools)
    return sk, subs


_PLACEHOLDER = re.compile("\ue000(\\d+)\ue001")


def _locate(skeleton_text: str, text: str, subs: list[tuple[str, str, str]]) -> list[tuple[int, int]]:
    """(skeleton position, text position) anchors after each placeholder; raises MaskError when the
    skeleton with the texts put back is not the rendered text."""
    anchors = []
    out = []
    pos = 0
    shift = 0
    for m in _PLACEHOLDER.finditer(skeleton_text):
        _ph, raw, as_json = subs[int(m.group(1))]
        out.append(skeleton_text[pos:m.start()])
        real = raw if text.startswith(raw, m.start() + shift) else as_json
        out.append(real)
        shift += len(real) - (m.end() - m.start())
        pos = m.end()
        anchors.append((pos, pos + shift))
    out.append(skeleton_text[pos:])
    if "".join(out) != text:
        raise MaskError("the template changes text that quotes <|im_start|> or <|im_end|>, so the "
                        "replies cannot be located safely")
    return anchors


def reply_spans(conv: Conversation, text: str, renderer=None) -> list[tuple[int, int, int]]:
    """(header start, body start, end) in ``text`` of each assistant turn, in order: found from the
    conversation's structure, so a user turn that quotes ``<|im_start|>assistant`` is never taken
    for a reply. ``renderer`` renders a conversation (needed only when some text quotes a marker)."""
    sk = _skeleton(conv)
    n_replies = sum(1 for m in conv.messages if m.role == "assistant")
    if sk is None:
        spans = reply_spans_in_text(text)
    else:
        if renderer is None:
            raise MaskError("a text quotes chat markers and no renderer was given")
        skel_text = renderer(sk[0])
        anchors = _locate(skel_text, text, sk[1])

        def to_text(p: int) -> int:
            shift = 0
            for sp, tp in anchors:
                if sp > p:
                    break
                shift = tp - sp
            return p + shift

        spans = [(to_text(h), to_text(b), to_text(e)) for h, b, e in reply_spans_in_text(skel_text)]
    if len(spans) != n_replies:
        raise MaskError(f"the rendered text has {len(spans)} assistant turns, the conversation {n_replies}")
    return spans


def trained_char_spans(text: str, options: MaskOptions = MaskOptions(), conv: Conversation | None = None,
                       renderer=None) -> list[tuple[int, int]]:
    """Character ranges [start, end) of ``text`` whose tokens are trained. With ``conv`` the replies
    are located from its structure and turns marked ``loss=False`` are left out; without it (plain
    text) every ``<|im_start|>assistant`` span counts."""
    if not options.assistant_only:
        return [(0, len(text))]
    if conv is not None:
        replies = [m for m in conv.messages if m.role == "assistant"]
        located = reply_spans(conv, text, renderer)
    else:
        located = reply_spans_in_text(text)
        replies = [None] * len(located)
    spans = []
    for msg, (_h, body, stop) in zip(replies, located):
        if msg is not None and not msg.loss:
            continue
        if not options.train_empty_think and text.startswith(EMPTY_THINK, body):
            body += len(EMPTY_THINK)
        if stop > body:
            spans.append((body, stop))
    return spans


def reply_spans_in_text(text: str) -> list[tuple[int, int, int]]:
    """Assistant spans found by searching plain text (no conversation known)."""
    out = []
    pos = 0
    while True:
        start = text.find(ASSISTANT_HEADER, pos)
        if start < 0:
            return out
        body = start + len(ASSISTANT_HEADER)
        end = text.find(END, body)
        stop = len(text) if end < 0 else end + len(END)
        out.append((start, body, stop))
        if end < 0:
            return out
        pos = stop


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

    def renderer(conv: Conversation) -> str:
        return render_texts([conv], tokenizer)[0]

    for conv, text, ids, offsets in zip(convs, texts, enc["input_ids"], enc["offset_mapping"]):
        offsets = [tuple(o) for o in offsets]
        try:
            spans = trained_char_spans(text, options, conv, renderer)
        except MaskError:
            # The mix drops such rows ("mask ambiguous"); one that gets here anyway trains nothing,
            # and the trainer counts it among the rows with no target.
            spans = []
        mask = mask_from_offsets(offsets, spans)
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


# ------------------------------------------------------------------------- multi-turn reasoning
def _is_query(m) -> bool:
    """A real user question, as Qwen3's template tells it apart from a tool result in a user turn."""
    c = m.content
    return m.role == "user" and not (c.startswith("<tool_response>") and c.endswith("</tool_response>"))


def last_query_index(conv: Conversation) -> int:
    """Index of the last real user turn (Qwen3's ``ns.last_query_index``); -1 when there is none."""
    return next((i for i in range(len(conv.messages) - 1, -1, -1) if _is_query(conv.messages[i])), -1)


def dropped_reasoning(conv: Conversation) -> list[int]:
    """Indexes of assistant turns whose reasoning Qwen3's template leaves out: those before the last
    user question. Rendered officially they train a reply with no think block."""
    last = last_query_index(conv)
    return [i for i, m in enumerate(conv.messages[:max(last, 0)]) if m.role == "assistant" and m.reasoning]


def apply_reasoning_turns(conv: Conversation, mode: str) -> list[Conversation]:
    """The training rows of one conversation under ``reasoning_turns`` (see docs/data.md):
    ``last_only`` the conversation as the official template renders it; ``mask_earlier`` the same
    text, with the turns that lose their reasoning left untrained; ``split`` the conversation cut
    after each question whose replies carry reasoning, so those replies are the last turns of their
    row (think block kept); each row trains only its own replies, so every reply is trained once."""
    import copy

    dropped = dropped_reasoning(conv)
    if not dropped or mode == "last_only":
        return [conv]
    if mode == "mask_earlier":
        out = copy.deepcopy(conv)
        for i in dropped:
            out.messages[i].loss = False
        return [out]
    if mode != "split":
        raise ValueError(f"unknown reasoning_turns mode {mode!r}")
    msgs = conv.messages
    queries = [i for i, m in enumerate(msgs) if _is_query(m)]
    cuts = []
    for q, nxt in zip(queries, queries[1:]):
        if any(i in dropped for i in range(q, nxt)):
            cuts.append(nxt)
    cuts.append(len(msgs))
    rows = []
    prev = 0
    for k, cut in enumerate(cuts):
        part = copy.deepcopy(conv)
        part.messages = part.messages[:cut]
        for m in part.messages[:prev]:
            if m.role == "assistant":
                m.loss = False
        part.origin = f"{conv.origin}#{k + 1}"
        rows.append(part)
        prev = cut
    return rows
