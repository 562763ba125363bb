"""GRPO rollouts: N completions of the policy being trained, through the chat engine's batched decode.

The chat engine (core.chat.engine) decodes many rows in one batch with a preallocated static KV cache,
samples on the device and, on a CUDA GPU, replays each decode step as a CUDA graph: much faster for
rollouts than ``model.generate``'s per-step Python and kernel-launch overhead. Here it runs every row
on ONE model, the adapter active (the fine-tuned pane), with no per-row adapter mask, so nothing is
hooked into the training model and the engine holds no state once the call returns.

Each row is its own sampling group with its own random generator, so the ``num_generations`` copies
of one prompt draw different completions. Without ``seed`` the generators are seeded from torch's
global generator, so ``transformers.set_seed`` (which the trainer calls) makes rollouts repeatable.

Before the first rollouts of a model, the engine's greedy decode of a few tokens is compared with
``model.generate``'s: a patched forward that ignored the static cache or the attention mask would
not raise, it would decode garbage. Where the engine cannot take the model (the tokens differ, or it
raises while building or decoding, e.g. a forward that refuses a static cache), the rollout falls
back to ``model.generate`` with the same settings and says why once per model in the log. Running
out of GPU memory is not such a case: it is raised.
"""

from __future__ import annotations

import time
from collections.abc import Callable

FALLBACK_ATTR = "_qwentune_rollout_fallback"  # set on a model the engine could not take: the reason
CHECKED_ATTR = "_qwentune_rollout_checked"  # set once the engine's decode agreed with model.generate
CHECK_TOKENS = 4  # greedy tokens compared, once per model, before the engine's rollouts are trusted
# A near tie in the check: best two logits closer than bf16's rounding at that size (8 bits of mantissa:
# a relative step of 1/128) plus a small absolute slack for logits near zero.
TIE_REL = 1 / 128
TIE_ABS = 0.02


def _log(msg: str) -> None:
    # The worker's log format (its stdout is train.log); the worker is not imported, it imports us.
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _sampling(max_new_tokens: int, temperature: float, top_p: float, top_k: int, seed: int):
    from core.chat.sampling import Sampling

    return Sampling(thinking=True, temperature=float(temperature), top_p=float(top_p), top_k=int(top_k),
                    min_p=0.0, presence_penalty=0.0, greedy=temperature <= 0.0,
                    max_new_tokens=int(max_new_tokens), seed=int(seed))


def _base_seed(seed: int | None) -> int:
    if seed is not None:
        return int(seed)
    import torch

    return int(torch.randint(0, 2**62, (1,)).item())


def _rollout_engine(model, tokenizer, eos_token_ids: list[int] | None):
    """A ChatEngine over ``model`` for rollouts: no adapter hooks, all rows on the adapter."""
    from core.chat.engine import ChatEngine

    class RolloutEngine(ChatEngine):
        def _install_hooks(self) -> None:
            """Every rollout row uses the adapter, so no row needs it masked: nothing is hooked into
            the model being trained."""

    engine = RolloutEngine(model, tokenizer)
    engine.mixed_batch = False
    if eos_token_ids:
        engine.stop_ids = {int(t) for t in eos_token_ids}
    return engine


def _engine_generate(model, tokenizer, prompt_ids, sampling, eos_token_ids, batch_size: int) -> list[list[int]]:
    from core.chat.engine import Batch

    engine = _rollout_engine(model, tokenizer, eos_token_ids)
    pane = "tuned" if engine.has_adapter else "base"
    out: list[list[int]] = []
    for start in range(0, len(prompt_ids), batch_size):
        chunk = prompt_ids[start:start + batch_size]
        rows = [(pane, list(ids), r) for r, ids in enumerate(chunk)]
        seeds = {r: (sampling.seed + start + r) % 2**63 for r in range(len(chunk))}
        batch = Batch(engine, rows, sampling, seeds)
        tokens: list[list[int]] = [[] for _ in chunk]
        for events in batch:
            for r, tok in events:
                if tok is not None:
                    tokens[r].append(tok)
        for r, stop in enumerate(batch.stop_tokens):
            if stop is not None:
                tokens[r].append(stop)  # the contract: the eos token is part of the completion
        out.extend(tokens)
    return out


def _eos_and_pad(model, tokenizer, eos_token_ids) -> tuple[list[int], int]:
    """The tokens that end a row (the caller's, else the model's and tokenizer's stop tokens) and the
    padding id model.generate is given (the tokenizer's, else the first end token)."""
    from core.chat.engine import _stop_ids

    eos = [int(t) for t in eos_token_ids] if eos_token_ids else sorted(_stop_ids(model, tokenizer))
    pad = getattr(tokenizer, "pad_token_id", None)
    return eos, int(pad) if pad is not None else (eos[0] if eos else 0)


def _cut_after_eos(row: list[int], eos: list[int]) -> list[int]:
    """A generated row up to and with its first end token (the rest is padding)."""
    stop = set(eos)
    cut = next((i for i, t in enumerate(row) if t in stop), None)
    return row[:cut + 1] if cut is not None else row


def _hf_generate(model, tokenizer, prompt_ids, *, max_new_tokens, temperature, top_p, top_k, eos_token_ids,
                 seed: int, batch_size: int) -> list[list[int]]:
    """The same rollouts through ``model.generate`` (left padding; each row cut after its first eos)."""
    import torch

    eos, pad = _eos_and_pad(model, tokenizer, eos_token_ids)
    device = next(model.parameters()).device
    sample = temperature > 0.0
    kwargs = {"max_new_tokens": int(max_new_tokens), "do_sample": sample, "pad_token_id": pad,
              "eos_token_id": eos or None}
    if sample:
        kwargs.update(temperature=float(temperature), top_p=float(top_p), top_k=int(top_k) or None)
    else:  # greedy: unset the sampling knobs a generation_config may carry, so none is applied
        kwargs.update(temperature=None, top_p=None, top_k=None)
    out: list[list[int]] = []
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):  # the trainer's own random state stays untouched
        torch.manual_seed(seed)
        for start in range(0, len(prompt_ids), batch_size):
            out.extend(_hf_chunk(model, prompt_ids[start:start + batch_size], pad, eos, device, kwargs))
    return out


def _hf_chunk(model, chunk, pad: int, eos: list[int], device, kwargs: dict) -> list[list[int]]:
    import torch

    width = max(len(p) for p in chunk)
    ids = torch.full((len(chunk), width), pad, dtype=torch.long)
    attn = torch.zeros((len(chunk), width), dtype=torch.long)
    for b, p in enumerate(chunk):
        ids[b, width - len(p):] = torch.tensor(p, dtype=torch.long)
        attn[b, width - len(p):] = 1
    with torch.no_grad():
        gen = model.generate(input_ids=ids.to(device), attention_mask=attn.to(device), **kwargs)
    return [_cut_after_eos(row, eos) for row in gen[:, width:].tolist()]


def _mark(model, attr: str, value) -> None:
    """Remember something about this model on the model itself (a frozen wrapper: not remembered)."""
    try:
        setattr(model, attr, value)
    except AttributeError:
        pass


def _out_of_memory(exc: BaseException) -> bool:
    import torch

    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", ())
    return isinstance(exc, (MemoryError, oom)) or "out of memory" in str(exc).lower()


def _near_tie(scores, step: int) -> bool:
    """Whether model.generate's choice at ``step`` was a near tie: its best two scores closer than
    the half-precision rounding of logits that size. Two correct decodes (CUDA graphs against eager
    kernels, another attention kernel) may pick either token of such a tie, and after it their
    sequences differ for good; random-init benchmark weights give ties at almost every step."""
    if scores is None or step >= len(scores):
        return False
    row = scores[step][0].float()
    top = row.topk(2).values.tolist()
    return top[0] - top[1] <= TIE_ABS + TIE_REL * abs(top[0])


def _engine_disagrees(model, tokenizer, prompt: list[int], eos_token_ids) -> str | None:
    """Why the engine cannot be trusted with ``model`` (None: it can): its greedy decode of a few
    tokens must equal model.generate's up to the first near tie. A patched forward (Unsloth's, another
    library's) that ignores the static cache or the attention mask would not raise, it would decode
    garbage; this catches it."""
    if hasattr(model, "eval"):
        model.eval()
    greedy = _sampling(CHECK_TOKENS, 0.0, 1.0, 0, 0)
    ours = _engine_generate(model, tokenizer, [prompt], greedy, eos_token_ids, 1)[0]
    theirs, scores = _hf_greedy_with_scores(model, tokenizer, prompt, eos_token_ids)
    for step in range(max(len(ours), len(theirs))):
        a = ours[step] if step < len(ours) else None
        b = theirs[step] if step < len(theirs) else None
        if a == b:
            continue
        if a is not None and b is not None and _near_tie(scores, step):
            return None  # equal up to a tie that either decode may break its own way
        return f"its greedy tokens {ours} differ from model.generate's {theirs} on the same prompt"
    return None


def _hf_greedy_with_scores(model, tokenizer, prompt: list[int], eos_token_ids):
    """model.generate's greedy tokens for one prompt (cut after its first eos) and its per-step scores."""
    import torch

    eos, pad = _eos_and_pad(model, tokenizer, eos_token_ids)
    device = next(model.parameters()).device
    ids = torch.tensor([prompt], dtype=torch.long, device=device)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=CHECK_TOKENS,
                             do_sample=False, temperature=None, top_p=None, top_k=None, pad_token_id=pad,
                             eos_token_id=eos or None, output_scores=True, return_dict_in_generate=True)
    return _cut_after_eos(out.sequences[0, len(prompt):].tolist(), eos), out.scores


def generate_completions(model, tokenizer, prompt_ids: list[list[int]], *, max_new_tokens: int,
                         temperature: float, top_p: float = 1.0, top_k: int = 0,
                         eos_token_ids: list[int] | None = None, seed: int | None = None,
                         batch_size: int = 0, log: Callable[[str], None] | None = None) -> list[list[int]]:
    """Each prompt's completion token ids: eos included when a row reached it, no padding.

    ``temperature`` 0 decodes greedily; ``top_p`` 1.0 and ``top_k`` 0 leave the distribution whole.
    ``eos_token_ids``: the tokens that end a row (default: the model's generation config and the
    tokenizer's eos, ``<|im_end|>`` and ``<|endoftext|>``). ``seed``: the rows' random numbers (default:
    drawn from torch's global generator). ``batch_size``: rows decoded together (0: all at once).
    The model is left in the train/eval mode it was in."""
    if not prompt_ids:
        return []
    if any(len(p) == 0 for p in prompt_ids):
        raise ValueError("every rollout prompt needs at least one token")
    if max_new_tokens < 1:
        raise ValueError("max_new_tokens must be at least 1")
    say = log or _log
    base_seed = _base_seed(seed)
    size = batch_size if batch_size and batch_size > 0 else len(prompt_ids)
    was_training = bool(getattr(model, "training", False))
    try:
        reason = getattr(model, FALLBACK_ATTR, None)
        if reason is None:
            sampling = _sampling(max_new_tokens, temperature, top_p, top_k, base_seed)
            try:
                if not getattr(model, CHECKED_ATTR, False):
                    reason = _engine_disagrees(model, tokenizer, min(prompt_ids, key=len), eos_token_ids)
                    if reason is None:
                        _mark(model, CHECKED_ATTR, True)
                if reason is None:
                    return _engine_generate(model, tokenizer, prompt_ids, sampling, eos_token_ids, size)
            except Exception as exc:  # noqa: BLE001 - any engine failure: fall back, and say why below
                if _out_of_memory(exc):
                    raise
                reason = f"{type(exc).__name__}: {exc}"[:400]
            if reason is not None:
                _mark(model, FALLBACK_ATTR, reason)
                say(f"rollouts: the chat engine's batched decode cannot run this model ({reason}); "
                    "generating with model.generate instead (slower)")
        if hasattr(model, "eval"):
            model.eval()
        return _hf_generate(model, tokenizer, prompt_ids, max_new_tokens=max_new_tokens, temperature=temperature,
                            top_p=top_p, top_k=top_k, eos_token_ids=eos_token_ids, seed=base_seed,
                            batch_size=size)
    finally:
        if hasattr(model, "train"):
            model.train(was_training)
