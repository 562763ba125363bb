"""GRPO rewards: the built-in ``answer``, ``format`` and ``length``, and the user's own from a Python file.

Every reward function has TRL's signature ``fn(prompts, completions, **kwargs) -> list[float | None]``:
``prompts`` and ``completions`` are strings (a conversational completion, a list of messages, is read
as its last message's content), and ``kwargs`` carry the prompt set's extra columns, the reference
answer as ``answer``, plus what TRL adds (``completion_ids``, ``trainer_state``). ``None`` means "not
applicable to this row" (TRL leaves it out of the sum), e.g. ``answer`` on a row without a reference.

The built-in rewards, each in [0, 1]:

- ``answer``: 1 when the final answer of the completion equals the reference, else 0. The final
  answer is read from the part after the think block exactly as the evaluation reads it
  (core.eval.answers: the last ``\\boxed{}``, an "answer: X" line, then the last number), and compared
  with the same normaliser (LaTeX wrappers, thousands separators, ``\\frac{3}{4}`` = 0.75). A reply
  still inside its think block has no answer yet: 0.
- ``format``: the reply has Qwen3's shape, ``<think>reasoning</think>`` then an answer. Full credit
  1.0 for one think block (opened by the reply or by the prompt), closed, with non-empty reasoning and a
  non-empty answer after it; 0.75 when the think block is empty; 0.5 when the block is closed but
  nothing follows it, or a second ``<think>`` tag appears; 0.25 when the block is opened but never
  closed (the reply ran out of tokens while reasoning); 0 without a think block, or with text before
  it. For a prompt with thinking off (its template already wrote the empty think block), the reply
  should hold no think tags: 1.0 for a non-empty answer without them, 0.5 with stray tags, 0 when empty.
- ``length``: shaping towards short correct answers: a correct reply (as ``answer`` judges it) scores
  ``1 - n / rl.max_completion_len`` (n = its token count, from TRL's ``completion_ids``; a text-only
  call counts about four characters per token), at least 0; a wrong or empty reply 0; a row without
  a reference answer ``None``. Summed with ``answer``, a correct answer is always worth more than a
  wrong one, and a shorter correct one a little more.

A user reward file (``rl.reward_file``) is a Python file whose reward functions have the signature::

    def reward_name(prompts: list[str], completions: list[str], answer: list[str | None], **kwargs) -> list[float]

The file's reward functions are the ones named in a top-level ``REWARDS`` list (functions or their
names) when it has one, else every top-level function it defines whose name is ``reward`` or starts
with ``reward_``. Each must return one number (or ``None``) per completion. A mistake in the file
(a syntax error, no reward function, a wrong signature, an exception, a wrong number of results) is a
:class:`core.settings.ConfigError` naming the file, the function and the line.
"""

from __future__ import annotations

import importlib.util
import inspect
import math
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

from core.chat.thinking import THINK_CLOSE, THINK_OPEN, prompt_opens_think, split_reasoning
from core.choices import REWARDS
from core.eval.answers import answers_match, extract_answer
from core.settings import ConfigError

RewardFn = Callable[..., list]
CHARS_PER_TOKEN = 4  # the length reward's estimate when it is given text without token ids
_END_TOKENS = ("<|im_end|>", "<|endoftext|>")


# ------------------------------------------------------------------------------------- helpers
def completion_text(completion) -> str:
    """A completion as text: a string as it is, a conversational one (list of messages) as the
    content of its last message, without a trailing end-of-turn token."""
    if isinstance(completion, list):
        completion = completion[-1].get("content", "") if completion else ""
    text = str(completion or "")
    changed = True
    while changed:
        changed = False
        stripped = text.rstrip()
        for tok in _END_TOKENS:
            if stripped.endswith(tok):
                text, changed = stripped[: -len(tok)], True
    return text


def _prompt_text(prompt) -> str:
    if isinstance(prompt, list):  # conversational: the template adds the generation prompt later
        return ""
    return str(prompt or "")


def _column(kwargs: dict, name: str, n: int) -> list:
    values = kwargs.get(name)
    if values is None:
        return [None] * n
    return list(values)


def _reference(value) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def reply_answer(prompt, completion) -> str:
    """The answer part of a completion (after its think block), as the evaluation reads a reply."""
    text = completion_text(completion)
    split = split_reasoning(text, started_in_think=prompt_opens_think(_prompt_text(prompt)))
    if split.in_reasoning:
        return ""
    return split.answer


def is_correct(prompt, completion, answer: str | None) -> bool | None:
    """Whether the completion's final answer equals ``answer`` (None: no reference answer)."""
    ref = _reference(answer)
    if ref is None:
        return None
    return answers_match(extract_answer(reply_answer(prompt, completion)), ref)


# ---------------------------------------------------------------------------------- built-ins
def answer_reward(prompts, completions, **kwargs) -> list[float | None]:
    """``answer``: 1 when the final answer equals the reference, 0 when not, None without one."""
    refs = _column(kwargs, "answer", len(completions))
    out: list[float | None] = []
    for p, c, ref in zip(prompts, completions, refs):
        ok = is_correct(p, c, ref)
        out.append(None if ok is None else float(ok))
    return out


def format_score(prompt, completion) -> float:
    """The ``format`` reward of one completion (the rules are in the module's docstring)."""
    text = completion_text(completion)
    prompt_text = _prompt_text(prompt)
    opened_by_prompt = prompt_opens_think(prompt_text)
    thinking_off = not opened_by_prompt and prompt_text.rstrip().endswith(THINK_CLOSE)
    if thinking_off:
        if not text.strip():
            return 0.0
        return 0.5 if (THINK_OPEN in text or THINK_CLOSE in text) else 1.0
    body = THINK_OPEN + text if opened_by_prompt else text
    open_at = body.find(THINK_OPEN)
    if open_at < 0 or body[:open_at].strip():
        return 0.0
    rest = body[open_at + len(THINK_OPEN):]
    close_at = rest.find(THINK_CLOSE)
    if close_at < 0:
        return 0.25
    reasoning, after = rest[:close_at], rest[close_at + len(THINK_CLOSE):]
    if THINK_OPEN in reasoning or THINK_OPEN in after or THINK_CLOSE in after or not after.strip():
        return 0.5
    return 1.0 if reasoning.strip() else 0.75


def format_reward(prompts, completions, **kwargs) -> list[float]:
    """``format``: Qwen3's think-then-answer shape, with partial credit."""
    return [format_score(p, c) for p, c in zip(prompts, completions)]


answer_reward.__name__ = answer_reward.__qualname__ = "answer"
format_reward.__name__ = format_reward.__qualname__ = "format"


def make_length(max_completion_len: int) -> RewardFn:
    """The ``length`` reward for completions of at most ``max_completion_len`` tokens."""
    limit = max(1, int(max_completion_len))

    def length(prompts, completions, **kwargs) -> list[float | None]:
        refs = _column(kwargs, "answer", len(completions))
        ids = kwargs.get("completion_ids")
        out: list[float | None] = []
        for i, (p, c, ref) in enumerate(zip(prompts, completions, refs)):
            ok = is_correct(p, c, ref)
            if ok is None:
                out.append(None)
                continue
            text = completion_text(c)
            if not ok or not text.strip():
                out.append(0.0)
                continue
            n = len(ids[i]) if ids is not None else math.ceil(len(text) / CHARS_PER_TOKEN)
            out.append(max(0.0, 1.0 - n / limit))
        return out

    return length


# ---------------------------------------------------------------------------------- user file
def _fail(path: Path, message: str, *, function: str = "", line: int | None = None,
          advice: str = "") -> ConfigError:
    place = f"{path}:{line}" if line else str(path)
    if function:
        place += f" ({function})"
    return ConfigError(message, "rl.reward_file", place,
                       advice=advice or "Fix the reward file and start the run again; the reward "
                                        "signature is in docs/train.md (Rewards).")


def _line_in(path: Path, tb) -> int | None:
    """The last line of ``path`` in a traceback (where the user's code failed)."""
    line = None
    for frame in traceback.extract_tb(tb):
        try:
            if Path(frame.filename).resolve() == path:
                line = frame.lineno
        except OSError:
            continue
    return line


def _load_module(path: Path):
    name = f"qwentune_reward_{abs(hash(str(path)))}"
    try:
        source = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise _fail(path, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise _fail(path, f"cannot read the reward file: {exc.strerror or exc}") from None
    try:
        code = compile(source, str(path), "exec")
    except SyntaxError as exc:
        raise _fail(path, f"syntax error: {exc.msg}", line=exc.lineno) from None
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    # Registered while it runs so dataclasses and pickling inside the file find their module.
    sys.modules[name] = module
    try:
        exec(code, module.__dict__)  # noqa: S102 - running the user's own reward file is the point
    except Exception as exc:  # noqa: BLE001 - any failure of the user's code becomes a clear error
        sys.modules.pop(name, None)
        raise _fail(path, f"the file fails when loaded: {type(exc).__name__}: {exc}",
                    line=_line_in(path, exc.__traceback__)) from None
    return module


def _line_of(fn) -> int | None:
    code = getattr(fn, "__code__", None)
    return code.co_firstlineno if code is not None else None


def _found_functions(path: Path, module) -> list[tuple[str, Callable]]:
    listed = module.__dict__.get("REWARDS")
    if listed is not None:
        if not isinstance(listed, (list, tuple)) or not listed:
            raise _fail(path, "REWARDS must be a non-empty list of reward functions (or their names)")
        found = []
        for item in listed:
            fn = module.__dict__.get(item) if isinstance(item, str) else item
            label = item if isinstance(item, str) else getattr(item, "__name__", repr(item))
            if not callable(fn):
                raise _fail(path, f"REWARDS names {label!r}, which is not a function in the file",
                            function=str(label))
            found.append((getattr(fn, "__name__", str(label)), fn))
        return found
    found = [(n, fn) for n, fn in module.__dict__.items()
             if inspect.isfunction(fn) and fn.__module__ == module.__name__
             and (n == "reward" or n.startswith("reward_"))]
    if not found:
        raise _fail(path, "no reward function found: define `def reward_<name>(prompts, completions, "
                          "answer, **kwargs)` (or `reward`), or list your functions in REWARDS")
    return found


def _check_signature(path: Path, name: str, fn: Callable) -> None:
    """TRL calls every reward with keywords: prompts, completions, the columns (answer among them) and
    its own extras, so the function must take those names and **kwargs."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return  # a builtin or C callable: judged by its first call
    has_kwargs = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
    problem = "" if has_kwargs else "no **kwargs"
    if not problem:
        try:
            sig.bind(prompts=[], completions=[], answer=[])
        except TypeError as exc:
            problem = str(exc)
    if problem:
        raise _fail(path, f"reward function {name!r} must have the signature (prompts, completions, answer, "
                          f"**kwargs): {problem}", function=name, line=_line_of(fn))


def _wrap_user(path: Path, name: str, fn: Callable) -> RewardFn:
    def call(prompts, completions, **kwargs):
        kwargs.setdefault("answer", [None] * len(completions))
        try:
            values = fn(prompts=prompts, completions=completions, **kwargs)
        except Exception as exc:  # noqa: BLE001 - the user's code failed: say where, as a config error
            raise _fail(path, f"reward function {name!r} raised {type(exc).__name__}: {exc}", function=name,
                        line=_line_in(path, exc.__traceback__) or _line_of(fn)) from None
        try:
            values = list(values)
        except TypeError:
            raise _fail(path, f"reward function {name!r} returned {type(values).__name__}, not a list of "
                              "numbers", function=name, line=_line_of(fn)) from None
        if len(values) != len(completions):
            raise _fail(path, f"reward function {name!r} returned {len(values)} values for "
                              f"{len(completions)} completions (one number per completion)",
                        function=name, line=_line_of(fn))
        out: list[float | None] = []
        for i, v in enumerate(values):
            if v is None:
                out.append(None)
                continue
            try:
                f = float(v)
            except (TypeError, ValueError):
                raise _fail(path, f"reward function {name!r} returned {v!r} for completion {i}, not a number",
                            function=name, line=_line_of(fn)) from None
            if math.isnan(f) or math.isinf(f):
                raise _fail(path, f"reward function {name!r} returned {f} for completion {i}",
                            function=name, line=_line_of(fn))
            out.append(f)
        return out

    call.__name__ = call.__qualname__ = name
    call.__doc__ = fn.__doc__
    return call


def load_reward_file(path: str | Path, taken: tuple[str, ...] = ()) -> list[RewardFn]:
    """The reward functions of a user's reward file, each wrapped so that a mistake in it is a
    ConfigError naming the file, the function and the line. ``taken``: names already used."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"reward file {str(path)!r} not found" if not p.exists()
                          else f"{str(path)!r} is not a file", "rl.reward_file",
                          advice="Give the path of a Python file with your reward function(s).")
    p = p.resolve()
    if p.suffix != ".py":
        raise _fail(p, "a reward file must be a Python file ending in .py")
    module = _load_module(p)
    out = []
    seen = set(taken)
    for name, fn in _found_functions(p, module):
        if name in seen:
            raise _fail(p, f"reward function name {name!r} is already taken (built-in rewards: "
                           f"{', '.join(REWARDS)}); rename it", function=name, line=_line_of(fn))
        seen.add(name)
        _check_signature(p, name, fn)
        out.append(_wrap_user(p, name, fn))
    return out


# ---------------------------------------------------------------------------------- the set
def build_rewards(rl_cfg) -> list[RewardFn]:
    """The reward functions of a run: ``rl.rewards`` in their order, then the reward file's ones.
    Each has a stable ``__name__`` (TRL logs ``rewards/<name>/mean`` under it)."""
    names = list(getattr(rl_cfg, "rewards", []) or [])
    out: list[RewardFn] = []
    for name in names:
        if name not in REWARDS:
            raise ConfigError(f"unknown reward {name!r}; choose from {', '.join(REWARDS)}", "rl.rewards")
        if name in [f.__name__ for f in out]:
            raise ConfigError(f"reward {name!r} is listed twice", "rl.rewards")
        if name == "answer":
            out.append(answer_reward)
        elif name == "format":
            out.append(format_reward)
        else:
            out.append(make_length(getattr(rl_cfg, "max_completion_len", 1024)))
    reward_file = (getattr(rl_cfg, "reward_file", "") or "").strip()
    if reward_file:
        out.extend(load_reward_file(reward_file, taken=tuple(REWARDS)))
    if not out:
        raise ConfigError("grpo needs at least one reward: list built-in ones in rl.rewards "
                          f"({', '.join(REWARDS)}) or give rl.reward_file", "rl.rewards")
    return out
