"""The generation engine behind the chat panes, the chat CLI and the evaluation.

One base model stays in memory. A fine-tuned run's LoRA adapter sits on it (a PEFT model) and is
switched on for the fine-tuned pane and off for the base pane. The switch happens inside
:meth:`ChatEngine._use`, for every single forward pass, under the engine's lock, and is verified
there: the base pane cannot run with the adapter active, and the two panes never run at once. Because
the adapter state is set per forward pass, streams of both panes (and of several browser sessions)
can be interleaved token by token, each with its own KV cache.

A merged fine-tuned model can sit beside the base model instead (``tuned_model``); the loader only
does that when the estimator says both fit.

Generation is a plain token loop with a KV cache and our own sampler (core.chat.sampling), so that
both panes draw the same random numbers from the same seed, and so the engine runs with any object
that behaves like a causal LM - the tests drive it with a mock model, as nanochat's engine tests do.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from core.chat.sampling import Sampling, make_generator, resolve, sample_next
from core.chat.thinking import Split, build_prompt, prompt_opens_think, split_reasoning
from core.config import SamplingConfig

PANES = ("base", "tuned")


class AdapterStateError(RuntimeError):
    """The adapter was not in the state a pane needs; nothing was generated."""


@dataclass
class Reply:
    """A finished reply of one pane."""

    pane: str
    text: str  # everything generated, think block included
    prompt_tokens: int
    new_tokens: int
    seconds: float
    finish_reason: str  # stop | length | until
    started_in_think: bool = False
    token_ids: list[int] | None = None

    @property
    def split(self) -> Split:
        return split_reasoning(self.text, started_in_think=self.started_in_think)

    @property
    def reasoning(self) -> str:
        return self.split.reasoning or ""

    @property
    def answer(self) -> str:
        return self.split.answer

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict:
        return {"reasoning": self.reasoning, "answer": self.answer}

    def stats(self) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "new_tokens": self.new_tokens,
                "seconds": round(self.seconds, 3), "tokens_per_s": round(self.tokens_per_s, 1),
                "finish_reason": self.finish_reason}


class IncrementalDecoder:
    """Token ids in, new text out, without splitting a multi-byte character across pieces."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self._prefix = 0
        self._read = 0

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        before = self._decode(self.ids[self._prefix:self._read])
        now = self._decode(self.ids[self._prefix:])
        if len(now) > len(before) and not now.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self.ids)
            return now[len(before):]
        return ""

    def text(self) -> str:
        return self._decode(self.ids)


class Generation:
    """One streamed reply. Iterate it for text pieces; ``reply`` is set when it ends."""

    def __init__(self, engine: ChatEngine, pane: str, prompt: str, sampling: Sampling,
                 until: Callable[[str], bool] | None = None):
        self.engine = engine
        self.pane = pane
        self.prompt = prompt
        self.sampling = sampling
        self.until = until
        self.text = ""
        self.reply: Reply | None = None
        self.started_in_think = prompt_opens_think(prompt)

    def split(self, partial: bool = True) -> Split:
        return split_reasoning(self.text, started_in_think=self.started_in_think, partial=partial)

    def __iter__(self) -> Iterator[str]:
        engine = self.engine
        prompt_ids = engine.encode(self.prompt)
        decoder = IncrementalDecoder(engine.tokenizer)
        start = time.perf_counter()
        finish = "length"
        for token_id in engine.token_stream(self.pane, prompt_ids, self.sampling):
            if token_id is None:
                finish = "stop"
                break
            piece = decoder.push(token_id)
            if piece:
                self.text += piece
                yield piece
                if self.until is not None and self.until(self.text):
                    finish = "until"
                    break
        self.text = decoder.text()
        self.reply = Reply(self.pane, self.text, len(prompt_ids), len(decoder.ids),
                           time.perf_counter() - start, finish, self.started_in_think, list(decoder.ids))

    def run(self) -> Reply:
        for _ in self:
            pass
        assert self.reply is not None
        return self.reply


class ChatEngine:
    """Streams replies of the base pane and the fine-tuned pane from one model in memory.

    ``model``: the base model, or a PEFT model whose adapter makes the fine-tuned pane.
    ``tuned_model``: a separate (merged) fine-tuned model, used instead of an adapter.
    ``info``: what was loaded (shown to the user, saved with evaluations).
    """

    def __init__(self, model, tokenizer, *, tuned_model=None, info: dict | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.tuned_model = tuned_model
        self.info = dict(info or {})
        self._lock = threading.Lock()
        self._tuner_layers = _tuner_layers(model) if _is_peft(model) else []
        if _is_peft(model) and tuned_model is not None:
            raise ValueError("give either a model with an adapter or a separate tuned model, not both")
        self.stop_ids = _stop_ids(model, tokenizer)
        for m in (model, tuned_model):
            if m is not None and hasattr(m, "eval"):
                m.eval()

    # ------------------------------------------------------------------------------- what is there
    @property
    def has_adapter(self) -> bool:
        return bool(self._tuner_layers)

    @property
    def panes(self) -> tuple[str, ...]:
        return PANES if (self.has_adapter or self.tuned_model is not None) else ("base",)

    def check_pane(self, pane: str) -> None:
        if pane not in PANES:
            raise ValueError(f"unknown pane {pane!r}; choose one of {list(PANES)}")
        if pane not in self.panes:
            raise ValueError("no fine-tuned model is loaded: load a run, a checkpoint or an adapter "
                             "to get the fine-tuned pane")

    # ------------------------------------------------------------------------ adapter on/off, lock
    def _adapter_enabled(self) -> list[bool]:
        return [not layer.disable_adapters for layer in self._tuner_layers]

    @contextmanager
    def _use(self, pane: str):
        """Hold the model for one forward pass with the pane's adapter state set and checked."""
        self.check_pane(pane)
        with self._lock:
            if pane == "tuned" and self.tuned_model is not None:
                yield self.tuned_model
            elif pane == "tuned":
                state = self._adapter_enabled()
                if not all(state):
                    raise AdapterStateError(f"adapter off in {state.count(False)} of {len(state)} layers "
                                            "for the fine-tuned pane")
                yield self.model
            elif self.has_adapter:
                # PEFT's own disable_adapter() walks every module of the model and costs about as much
                # as a forward pass when panes alternate token by token; flipping the cached layers
                # does the same switch, and the check below proves it took effect on every layer.
                self._switch_adapters(False)
                try:
                    if any(self._adapter_enabled()):
                        raise AdapterStateError("adapter still active for the base pane")
                    yield self.model
                finally:
                    self._switch_adapters(True)
            else:
                yield self.model

    def _switch_adapters(self, enabled: bool) -> None:
        for layer in self._tuner_layers:
            if hasattr(layer, "_disable_adapters"):
                layer._disable_adapters = not enabled
            else:
                layer.enable_adapters(enabled)

    def model_for(self, pane: str):
        return self.tuned_model if (pane == "tuned" and self.tuned_model is not None) else self.model

    def device(self, pane: str = "base"):
        import torch

        model = self.model_for(pane)
        dev = getattr(model, "device", None)
        if dev is not None:
            return torch.device(dev)
        params = getattr(model, "parameters", None)
        if callable(params):
            for p in params():
                return p.device
        return torch.device("cpu")

    def forward(self, pane: str, input_ids, past_key_values=None, **kwargs):
        """One forward pass of the pane's model (adapter state set under the lock)."""
        import torch

        with self._use(pane) as model, torch.inference_mode():
            return model(input_ids=input_ids, past_key_values=past_key_values, **kwargs)

    # ---------------------------------------------------------------------------------- generation
    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def prompt(self, messages, *, thinking: bool, system: str = "") -> str:
        return build_prompt(self.tokenizer, messages, thinking=thinking, system=system)

    def token_stream(self, pane: str, prompt_ids: list[int], sampling: Sampling) -> Iterator[int | None]:
        """New token ids one by one; ``None`` marks a stop token (the stream then ends)."""
        import torch

        self.check_pane(pane)
        if not prompt_ids:
            raise ValueError("empty prompt")
        device = self.device(pane)
        generator = make_generator(sampling.seed)
        seen: set[int] = set()
        ids = torch.tensor([prompt_ids], dtype=torch.long, device=device)
        cache = None
        for _ in range(sampling.max_new_tokens):
            out = self.forward(pane, ids, cache, use_cache=True, logits_to_keep=1)
            cache = out.past_key_values
            token = sample_next(out.logits[0, -1], sampling, generator, seen)
            if token in self.stop_ids:
                yield None
                return
            seen.add(token)
            yield token
            ids = torch.tensor([[token]], dtype=torch.long, device=device)

    def stream(self, pane: str, messages, sampling: SamplingConfig | Sampling | None = None, *,
               system: str = "", until: Callable[[str], bool] | None = None) -> Generation:
        """A streamed reply of ``pane`` to ``messages`` (past turns: answers only)."""
        self.check_pane(pane)
        s = sampling if isinstance(sampling, Sampling) else resolve(sampling)
        return Generation(self, pane, self.prompt(messages, thinking=s.thinking, system=system), s, until)

    def generate(self, pane: str, messages, sampling: SamplingConfig | Sampling | None = None, *,
                 system: str = "", until: Callable[[str], bool] | None = None) -> Reply:
        return self.stream(pane, messages, sampling, system=system, until=until).run()

    def generate_ids(self, pane: str, prompt_ids: list[int], sampling: Sampling) -> list[int]:
        """Raw token ids (stop token excluded): what the base-pane equality test compares."""
        return [t for t in self.token_stream(pane, prompt_ids, sampling) if t is not None]

    def compare_stream(self, histories: dict[str, list], sampling: SamplingConfig | Sampling | None = None,
                       *, system: str = "") -> CompareStream:
        """Both panes streamed together, piece by piece, alternating (they share one model)."""
        s = sampling if isinstance(sampling, Sampling) else resolve(sampling)
        gens = {pane: self.stream(pane, histories[pane], s, system=system)
                for pane in self.panes if pane in histories}
        return CompareStream(gens)

    def compare(self, messages, sampling: SamplingConfig | Sampling | None = None, *,
                system: str = "") -> dict[str, Reply]:
        """Both panes' replies to the same messages with the same sampling and seed."""
        stream = self.compare_stream({pane: messages for pane in self.panes}, sampling, system=system)
        for _ in stream:
            pass
        return stream.replies()

    # ---------------------------------------------------------------------------------------- loss
    def token_nll(self, pane: str, rows: list[tuple[list[int], list[int]]], *,
                  batch_size: int = 4, chunk: int = 1024) -> list[tuple[float, int]]:
        """Summed negative log-likelihood and count of the trained tokens of each row.

        ``rows``: (input_ids, mask) with mask 1 where a token is trained (core.data.render). Token i is
        predicted from position i - 1, exactly as the trainer's shifted loss does. Only the logits of
        positions that predict trained tokens are computed, so memory follows the trained tokens."""
        import torch

        device = self.device(pane)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        results: list[tuple[float, int]] = [(0.0, 0)] * len(rows)
        order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]))  # similar lengths share a batch
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            width = max(len(rows[i][0]) for i in idx)
            ids = torch.full((len(idx), width), pad, dtype=torch.long)
            attn = torch.zeros((len(idx), width), dtype=torch.long)
            targets = torch.zeros((len(idx), width), dtype=torch.bool)  # position p predicts token p+1
            for b, i in enumerate(idx):
                row_ids, mask = rows[i]
                ids[b, :len(row_ids)] = torch.tensor(row_ids)
                attn[b, :len(row_ids)] = 1
                for p in range(1, len(row_ids)):
                    if mask[p]:
                        targets[b, p - 1] = True
            keep = torch.nonzero(targets.any(0)).flatten()
            if keep.numel() == 0:
                for i in idx:
                    results[i] = (0.0, 0)
                continue
            out = self.forward(pane, ids.to(device), None, attention_mask=attn.to(device), use_cache=False,
                               logits_to_keep=keep.to(device))
            logits = out.logits  # (batch, len(keep), vocab)
            labels = ids[:, keep + 1]
            for b, i in enumerate(idx):
                sel = torch.nonzero(targets[b, keep]).flatten()
                total = 0.0
                for c in range(0, sel.numel(), chunk):
                    part = sel[c:c + chunk]
                    lg = logits[b, part.to(logits.device)].float()
                    total += float(torch.nn.functional.cross_entropy(
                        lg, labels[b, part].to(lg.device), reduction="sum"))
                results[i] = (total, int(sel.numel()))
        return results


class CompareStream:
    """Iterate for ``(pane, piece)`` pairs; the panes take turns so both visibly stream."""

    def __init__(self, generations: dict[str, Generation]):
        self.generations = generations

    def __iter__(self) -> Iterator[tuple[str, str]]:
        iters = {pane: iter(g) for pane, g in self.generations.items()}
        while iters:
            for pane in list(iters):
                try:
                    piece = next(iters[pane])
                except StopIteration:
                    del iters[pane]
                    yield pane, ""  # the pane finished: its reply is ready
                    continue
                yield pane, piece

    def replies(self) -> dict[str, Reply]:
        return {pane: g.reply for pane, g in self.generations.items() if g.reply is not None}


# ------------------------------------------------------------------------------------------ helpers
def _is_peft(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


def _tuner_layers(model) -> list:
    """Every module PEFT switches on and off (the same set ``disable_adapter`` walks)."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils.other import AuxiliaryTrainingWrapper

    layers = [m for m in model.modules() if isinstance(m, (BaseTunerLayer, AuxiliaryTrainingWrapper))]
    for name, cfg in model.peft_config.items():
        if getattr(cfg, "bias", "none") != "none":
            raise ValueError(f"adapter {name!r} trains biases (bias={cfg.bias!r}): switching it off would "
                             "not give the base model back, so the base pane could not be trusted. Load "
                             "a merged model with a separate base model instead.")
    return layers


def _stop_ids(model, tokenizer) -> set[int]:
    ids: set[int] = set()
    gen_cfg = getattr(model, "generation_config", None)
    eos = getattr(gen_cfg, "eos_token_id", None) if gen_cfg is not None else None
    if isinstance(eos, int):
        ids.add(eos)
    elif isinstance(eos, (list, tuple)):
        ids.update(int(e) for e in eos)
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(int(tokenizer.eos_token_id))
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    for tok in ("<|im_end|>", "<|endoftext|>"):
        if tok in vocab:
            ids.add(int(vocab[tok]))
    return ids
