"""The generation engine behind the chat panes, the chat CLI, the OpenAI endpoint and the evaluation.

One base model stays in memory. A fine-tuned run's LoRA adapter sits on it (a PEFT model). Both panes
decode in ONE batch: the base row and the fine-tuned row advance together, one forward pass per token
for both, with the KV cache of both rows in one preallocated (static) cache. The base row is kept free
of the adapter inside that forward pass: every LoRA layer's ``lora_B`` output (the adapter's whole
contribution to the layer) is zeroed for the base rows by a forward hook that reads a per-row mask,
so the base row's activations are exactly the base model's. Adapters that contribute anywhere else
(DoRA, trained biases, ``modules_to_save`` copies, LoRA on embeddings) cannot be masked that way; for
them the base rows run as a second forward pass with the adapter switched off (and checked off).

A merged fine-tuned model can sit beside the base model instead (``tuned_model``); then each model
runs its own rows, one forward pass each per token.

The decode loop is our own (core.chat.sampling draws on the device, the same random numbers for the
two rows of one prompt), so it runs with any object that behaves like a causal LM - the tests drive
it with a mock model, as nanochat's engine tests do. On a CUDA GPU the per-token forward pass of a
transformers model is captured once into a CUDA graph and replayed, which removes the Python and
kernel-launch overhead that dominates decoding of small batches; if capture fails the loop stays
eager and :attr:`ChatEngine.decode_info` says why.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

from core.chat.sampling import Sampling, make_generator, resolve, sample_rows
from core.chat.thinking import Split, build_prompt, prompt_opens_think, split_reasoning
from core.config import SamplingConfig

PANES = ("base", "tuned")
CACHE_BUCKET = 128  # static caches are sized in steps of this many tokens
GRAPH_AFTER = 2  # eager decode steps before the CUDA graph is captured (warm-up of kernels, cuBLAS)


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
    first_token_s: float | None = None  # time to the first token

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


def sampling_key(s: Sampling) -> Sampling:
    """What rows of one batch must share: everything but the seed."""
    return replace(s, seed=0)


# ------------------------------------------------------------------------------ the batched decode
@dataclass
class StepTimes:
    """Where the decode time went (seconds, summed over steps); filled when profiling."""

    prefill: float = 0.0
    forward: float = 0.0
    sampling: float = 0.0
    host: float = 0.0
    steps: int = 0

    def to_json(self) -> dict:
        per = (lambda v: round(1000 * v / self.steps, 3)) if self.steps else (lambda v: None)
        return {"prefill_s": round(self.prefill, 4), "steps": self.steps, "forward_ms": per(self.forward),
                "sampling_ms": per(self.sampling), "host_ms": per(self.host)}


@dataclass
class _Lane:
    """The rows one model runs in one forward pass, with their cache and decode buffers."""

    model: object
    rows: list[int]  # indices into the batch's rows
    drop: object = None  # (rows, 1, 1) bool: zero the adapter for these rows (None: keep it everywhere)
    adapter_off: bool = False  # switch the adapter off for the whole forward pass (split mode)
    hf: bool = False  # a transformers model: static cache, explicit positions and 4D mask
    cache: object = None
    ids: object = None  # (rows, 1) next input tokens
    pos: object = None  # (rows, 1) their positions
    valid: object = None  # (rows, cache_len) bool: cache slots a row attends to
    slot: object = None  # (1,) long: the cache slot the next token goes to
    mask: object = None  # (rows, 1, 1, cache_len) additive mask for the next step
    attn2d: object = None  # generic models: the 2D attention mask so far
    index: object = None  # device tensor of ``rows``
    graph: object = None
    graph_logits: object = None
    eager_steps: int = 0


class Batch:
    """One batched decode of several rows (pane, prompt ids, group), advancing one token per step.

    Iterate for the steps: each yields ``[(row, token_id | None), ...]`` for the rows still running
    (``None``: the row produced a stop token, kept in ``stop_tokens``, and is done). :meth:`finish`
    ends a row early. Rows of one
    group share the random numbers (and so the seed) of that group."""

    def __init__(self, engine: ChatEngine, rows: list[tuple[str, list[int], int]], sampling: Sampling,
                 seeds: dict[int, int] | None = None, *, profile: bool = False):
        if not rows:
            raise ValueError("nothing to generate")
        for pane, ids, _group in rows:
            engine.check_pane(pane)
            if not ids:
                raise ValueError("empty prompt")
        self.engine = engine
        self.rows = rows
        self.sampling = sampling
        groups = sorted({g for _p, _i, g in rows})
        self._group_pos = {g: k for k, g in enumerate(groups)}
        self.seeds = {g: (seeds or {}).get(g, sampling.seed) for g in groups}
        self.done = [False] * len(rows)
        self.counts = [0] * len(rows)
        self.stop_tokens: list[int | None] = [None] * len(rows)  # the stop token each finished row drew
        self.profile = profile
        self.times = StepTimes()

    def finish(self, row: int) -> None:
        self.done[row] = True

    def _sync(self, device) -> None:
        if self.profile and getattr(device, "type", "cpu") == "cuda":
            import torch

            torch.cuda.synchronize(device)

    def __iter__(self) -> Iterator[list[tuple[int, int | None]]]:
        import torch

        engine, s = self.engine, self.sampling
        lanes = engine._lanes([pane for pane, _i, _g in self.rows])
        device = engine.device(self.rows[0][0])
        widest = max(len(ids) for _p, ids, _g in self.rows)
        cache_len = -(-(widest + s.max_new_tokens) // CACHE_BUCKET) * CACHE_BUCKET
        gens = [make_generator(self.seeds[g], device) for g in sorted(self.seeds)]
        groups = [self._group_pos[g] for _p, _i, g in self.rows]
        seen = None  # (rows, vocab) bool: tokens each row generated (for the presence penalty)
        stop = torch.tensor(sorted(engine.stop_ids) or [-1], device=device)
        # Inference mode only around the work, never across a yield: the consumer's code between steps
        # runs in its own grad mode.
        t0 = time.perf_counter()
        with torch.inference_mode():
            logits = engine._prefill(lanes, self.rows, cache_len, device)
        self._sync(device)
        self.times.prefill = time.perf_counter() - t0
        for _step in range(s.max_new_tokens):
            t1 = time.perf_counter()
            with torch.inference_mode():
                if s.presence_penalty and seen is None:
                    seen = torch.zeros(logits.shape, dtype=torch.bool, device=logits.device)
                tokens = sample_rows(logits, s, gens, groups, seen)
                both = torch.stack([tokens, torch.isin(tokens, stop).long()])
            self._sync(device)
            t2 = time.perf_counter()
            host_tokens, host_stop = both.tolist()  # the step's one copy to the host: B ids and B stop flags
            events = []
            for r, (tok, stopped) in enumerate(zip(host_tokens, host_stop)):
                if self.done[r]:
                    continue
                if stopped:
                    self.done[r] = True
                    self.stop_tokens[r] = tok
                    events.append((r, None))
                else:
                    self.counts[r] += 1
                    events.append((r, tok))
                    if self.counts[r] >= s.max_new_tokens:
                        self.done[r] = True
            t3 = time.perf_counter()
            yield events
            t4 = time.perf_counter()
            self.times.sampling += t2 - t1
            self.times.host += t3 - t2
            if all(self.done):
                break
            with torch.inference_mode():
                if seen is not None:
                    seen.scatter_(1, tokens[:, None], True)
                logits = engine._decode_step(lanes, tokens, len(self.rows))
            self._sync(device)
            self.times.forward += time.perf_counter() - t4
            self.times.steps += 1


class Generation:
    """One streamed reply. Iterate it for text pieces; ``reply`` is set when it ends."""

    def __init__(self, engine: ChatEngine, pane: str, prompt: str, sampling: Sampling,
                 until: Callable[[str], bool] | None = None, prompt_ids: list[int] | None = None):
        self.engine = engine
        self.pane = pane
        self.prompt = prompt
        self.sampling = sampling
        self.until = until
        self.text = ""
        self.reply: Reply | None = None
        self.started_in_think = prompt_opens_think(prompt)
        self.prompt_ids = prompt_ids if prompt_ids is not None else engine.encode(prompt)
        self._decoder = IncrementalDecoder(engine.tokenizer)
        self._start = 0.0
        self._first: float | None = None

    def split(self, partial: bool = True) -> Split:
        return split_reasoning(self.text, started_in_think=self.started_in_think, partial=partial)

    # Driven by a Batch (one row of it): begin, push each token, end.
    def _begin(self, start: float) -> None:
        self._start = start

    def _push(self, token_id: int) -> tuple[str, bool]:
        """The new text piece and whether ``until`` says to stop."""
        if self._first is None:
            self._first = time.perf_counter() - self._start
        piece = self._decoder.push(token_id)
        if piece:
            self.text += piece
            if self.until is not None and self.until(self.text):
                return piece, True
        return piece, False

    def _end(self, finish: str) -> Reply:
        self.text = self._decoder.text()
        ids = self._decoder.ids
        self.reply = Reply(self.pane, self.text, len(self.prompt_ids), len(ids), time.perf_counter() - self._start,
                           finish, self.started_in_think, list(ids), self._first)
        return self.reply

    def __iter__(self) -> Iterator[str]:
        for _pane, piece in CompareStream({self.pane: self}):
            if piece:
                yield piece

    def run(self) -> Reply:
        for _ in self:
            pass
        assert self.reply is not None
        return self.reply


class CompareStream:
    """Several generations decoded in ONE batch. Iterate for ``(pane, piece)`` pairs: each step gives
    one piece per pane in pane order, so the panes stream side by side; ``(pane, "")`` once a pane's
    reply is ready. ``groups`` (one per generation) says which share random numbers: by default all
    of them, as in the chat compare, where both panes use the request's seed."""

    def __init__(self, generations: dict[str, Generation] | list[Generation], groups: list[int] | None = None,
                 *, profile: bool = False, on_done: Callable[[int, Reply], None] | None = None):
        gens = list(generations.values()) if isinstance(generations, dict) else list(generations)
        self.generations = generations if isinstance(generations, dict) else {
            str(i): g for i, g in enumerate(gens)}
        self._gens = gens
        self.groups = groups if groups is not None else [0] * len(gens)
        self.profile = profile
        self.on_done = on_done
        self.batch: Batch | None = None

    def __iter__(self) -> Iterator[tuple[str, str]]:
        gens = self._gens
        if not gens:
            return
        engine = gens[0].engine
        key = sampling_key(gens[0].sampling)
        seeds: dict[int, int] = {}
        for g, grp in zip(gens, self.groups):
            if sampling_key(g.sampling) != key:
                raise ValueError("generations of one batch must share their sampling settings (all but the seed)")
            if seeds.setdefault(grp, g.sampling.seed) != g.sampling.seed:
                raise ValueError("generations of one group must share their seed")
        batch = Batch(engine, [(g.pane, g.prompt_ids, grp) for g, grp in zip(gens, self.groups)], gens[0].sampling,
                      seeds, profile=self.profile)
        self.batch = batch
        start = time.perf_counter()
        for g in gens:
            g._begin(start)
        finished: set[int] = set()

        def end(r: int, reason: str) -> tuple[str, str]:
            finished.add(r)
            reply = gens[r]._end(reason)
            if self.on_done is not None:
                self.on_done(r, reply)
            return gens[r].pane, ""

        for events in batch:
            for r, tok in events:
                if tok is None:
                    yield end(r, "stop")
                    continue
                piece, stop = gens[r]._push(tok)
                if piece:
                    yield gens[r].pane, piece
                if stop:
                    batch.finish(r)
                    yield end(r, "until")
                elif batch.done[r]:
                    yield end(r, "length")
        for r in range(len(gens)):
            if r not in finished:
                yield end(r, "length")

    def replies(self) -> dict[str, Reply]:
        return {key: g.reply for key, g in self.generations.items() if g.reply is not None}


class ChatEngine:
    """Streams replies of the base pane and the fine-tuned pane from one model in memory.

    ``model``: the base model, or a PEFT model whose adapter makes the fine-tuned pane.
    ``tuned_model``: a separate (merged) fine-tuned model, used instead of an adapter.
    ``info``: what was loaded (shown to the user, saved with evaluations).
    ``cuda_graphs``: replay the decode step as a CUDA graph on a GPU (False: always eager).
    """

    def __init__(self, model, tokenizer, *, tuned_model=None, info: dict | None = None, cuda_graphs: bool = True):
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
        self.cuda_graphs = cuda_graphs
        self._graph_error: str | None = None
        self._drop = None  # read by the LoRA hooks during a forward pass (under the lock)
        self._hooked = 0
        self.mixed_batch, self._split_reason = False, None
        if self._tuner_layers:
            self._split_reason = _unmaskable(model, self._tuner_layers)
            if self._split_reason is None:
                self._install_hooks()
                self.mixed_batch = True

    # ------------------------------------------------------------------------------- what is there
    @property
    def has_adapter(self) -> bool:
        return bool(self._tuner_layers)

    @property
    def panes(self) -> tuple[str, ...]:
        return PANES if (self.has_adapter or self.tuned_model is not None) else ("base",)

    @property
    def decode_info(self) -> dict:
        """How the panes decode here (shown with the speed figures)."""
        if self.tuned_model is not None:
            batching = "one forward pass per model (merged model beside the base)"
        elif self.mixed_batch:
            batching = "both panes in one forward pass (per-row LoRA mask)"
        elif self.has_adapter:
            batching = f"base rows in a second forward pass with the adapter off: {self._split_reason}"
        else:
            batching = "one model"
        if self.device().type != "cuda":
            graphs = "off (not a CUDA device)"
        elif not self.cuda_graphs:
            graphs = "off"
        else:
            graphs = "failed, eager: " + self._graph_error if self._graph_error else "on"
        return {"batching": batching, "cuda_graphs": graphs}

    def check_pane(self, pane: str) -> None:
        if pane not in PANES:
            raise ValueError(f"unknown pane {pane!r}; choose one of {list(PANES)}")
        if pane not in self.panes:
            raise ValueError("no fine-tuned model is loaded: load a run, a checkpoint or an adapter "
                             "to get the fine-tuned pane")

    # ------------------------------------------------------------------------ adapter on/off, lock
    def _adapter_enabled(self) -> list[bool]:
        return [not layer.disable_adapters for layer in self._tuner_layers]

    def _install_hooks(self) -> None:
        """A forward hook on every ``lora_B`` module: zero its output for the rows ``self._drop`` marks."""
        engine = self

        def hook(_module, _inputs, output):
            drop = engine._drop
            return output if drop is None else output.masked_fill(drop, 0)

        for layer in self._tuner_layers:
            for name in layer.lora_B:
                layer.lora_B[name].register_forward_hook(hook)
                self._hooked += 1

    def _check_adapters(self, panes) -> None:
        """Once per batch: the adapter is on in every layer when a fine-tuned row runs on it."""
        if not self.has_adapter or "tuned" not in panes:
            return
        state = self._adapter_enabled()
        if not all(state):
            raise AdapterStateError(f"adapter off in {state.count(False)} of {len(state)} layers "
                                    "for the fine-tuned pane")
        if self.mixed_batch and self._hooked < len(self._tuner_layers):
            raise AdapterStateError("the base rows' adapter mask is missing on some layers")

    def _switch_adapters(self, enabled: bool) -> None:
        for layer in self._tuner_layers:
            if hasattr(layer, "_disable_adapters"):
                layer._disable_adapters = not enabled
            else:
                layer.enable_adapters(enabled)

    @contextmanager
    def _lane_state(self, lane: _Lane):
        """Set the adapter state a lane's rows need for one forward pass (the caller holds the lock)."""
        if lane.adapter_off:
            self._switch_adapters(False)
            try:
                if any(self._adapter_enabled()):
                    raise AdapterStateError("adapter still active for the base pane")
                yield
            finally:
                self._switch_adapters(True)
            return
        self._drop = lane.drop
        try:
            yield
        finally:
            self._drop = None

    def _lanes(self, panes: list[str]) -> list[_Lane]:
        """Which model runs which rows, and with what adapter state."""
        import torch

        with self._lock:
            self._check_adapters(panes)
        base_rows = [r for r, p in enumerate(panes) if p == "base"]
        tuned_rows = [r for r, p in enumerate(panes) if p == "tuned"]
        lanes = []
        if self.tuned_model is not None:
            if base_rows:
                lanes.append(_Lane(self.model, base_rows))
            if tuned_rows:
                lanes.append(_Lane(self.tuned_model, tuned_rows))
        elif self.has_adapter and not self.mixed_batch:
            if base_rows:
                lanes.append(_Lane(self.model, base_rows, adapter_off=True))
            if tuned_rows:
                lanes.append(_Lane(self.model, tuned_rows))
        else:
            lane = _Lane(self.model, list(range(len(panes))))
            if self.has_adapter and base_rows:
                lane.drop = torch.tensor([p == "base" for p in panes], device=self.device()).view(-1, 1, 1)
            lanes.append(lane)
        for lane in lanes:
            lane.hf = _is_hf(lane.model)
        return lanes

    @contextmanager
    def _use(self, pane: str):
        """Hold the model for one forward pass of ``pane`` rows (all rows of the pass are that pane)."""
        import torch

        self.check_pane(pane)
        lanes = self._lanes([pane])
        lane = lanes[0]
        if lane.drop is not None:
            lane.drop = torch.ones((1, 1, 1), dtype=torch.bool, device=lane.drop.device)
        with self._lock, self._lane_state(lane):
            yield lane.model

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

    # ------------------------------------------------------------------------------ decode internals
    def _run(self, lane: _Lane, **kwargs):
        with self._lock, self._lane_state(lane):
            return lane.model(**kwargs)

    def _prefill(self, lanes: list[_Lane], rows, cache_len: int, device):
        """Run every lane's prompts; returns the first logits of all rows, (rows, vocab), in row order."""
        import torch

        parts = []
        for lane in lanes:
            prompts = [rows[r][1] for r in lane.rows]
            width = max(len(p) for p in prompts)
            pad = self.tokenizer.pad_token_id if getattr(self.tokenizer, "pad_token_id", None) is not None else 0
            ids = torch.full((len(prompts), width), int(pad), dtype=torch.long)
            valid = torch.zeros((len(prompts), width), dtype=torch.bool)
            for b, p in enumerate(prompts):  # left padding: every row's next token goes to the same slot
                ids[b, width - len(p):] = torch.tensor(p, dtype=torch.long)
                valid[b, width - len(p):] = True
            ids, valid = ids.to(device), valid.to(device)
            lane.index = torch.tensor(lane.rows, device=device)
            if lane.hf:
                from transformers import StaticCache

                dtype = _model_dtype(lane.model)
                lane.cache = StaticCache(config=lane.model.config, max_cache_len=cache_len)
                lane.valid = torch.zeros((len(prompts), cache_len), dtype=torch.bool, device=device)
                lane.valid[:, :width] = valid
                pos = (valid.long().cumsum(-1) - 1).clamp(min=0)
                causal = torch.ones((width, cache_len), dtype=torch.bool, device=device).tril()
                allowed = causal[None] & lane.valid[:, None, :]
                mask = _additive(allowed[:, None], dtype)
                out = self._run(lane, input_ids=ids, position_ids=pos, attention_mask=mask,
                                past_key_values=lane.cache, use_cache=True, logits_to_keep=1)
                lane.pos = pos[:, -1:].clone()
                lane.slot = torch.tensor([width], dtype=torch.long, device=device)
                lane.ids = torch.zeros((len(prompts), 1), dtype=torch.long, device=device)
                lane.mask = torch.zeros((len(prompts), 1, 1, cache_len), dtype=dtype, device=device)
            else:
                lane.attn2d = valid.long()
                kwargs = {} if valid.all() else {"attention_mask": lane.attn2d}
                out = self._run(lane, input_ids=ids, past_key_values=None, use_cache=True, logits_to_keep=1,
                                **kwargs)
                lane.cache = out.past_key_values
            parts.append(out.logits[:, -1])
        return _gather_rows(lanes, parts, len(rows))

    def _decode_step(self, lanes: list[_Lane], tokens, n_rows: int):
        """Feed each row its sampled token; returns the next logits (rows, vocab) in row order."""
        import torch

        parts = []
        for lane in lanes:
            tok = tokens.index_select(0, lane.index)[:, None]
            if not lane.hf:
                ones = torch.ones((len(lane.rows), 1), dtype=lane.attn2d.dtype, device=lane.attn2d.device)
                lane.attn2d = torch.cat([lane.attn2d, ones], dim=1)
                kwargs = {} if bool(lane.attn2d.all()) else {"attention_mask": lane.attn2d}
                out = self._run(lane, input_ids=tok, past_key_values=lane.cache, use_cache=True, logits_to_keep=1,
                                **kwargs)
                lane.cache = out.past_key_values
                parts.append(out.logits[:, -1])
                continue
            # Static buffers, updated in place: the CUDA graph reads them at fixed addresses.
            lane.ids.copy_(tok)
            lane.pos.add_(1)
            lane.valid.index_fill_(1, lane.slot, True)
            lane.slot.add_(1)
            lane.mask.copy_(_additive(lane.valid[:, None, None, :], lane.mask.dtype))
            parts.append(self._hf_step(lane))
        return _gather_rows(lanes, parts, n_rows)

    def _hf_step(self, lane: _Lane):
        import torch

        kwargs = dict(input_ids=lane.ids, position_ids=lane.pos, attention_mask=lane.mask,
                      past_key_values=lane.cache, use_cache=True, logits_to_keep=1)
        if lane.graph is not None:
            with self._lock:  # the graph holds the lane's adapter mask; the lock keeps steps apart
                lane.graph.replay()
            return lane.graph_logits
        use_graph = (self.cuda_graphs and self._graph_error is None and lane.ids.device.type == "cuda"
                     and lane.eager_steps >= GRAPH_AFTER and not lane.adapter_off)
        if use_graph:
            graph = torch.cuda.CUDAGraph()
            try:
                with self._lock, self._lane_state(lane):
                    torch.cuda.synchronize()
                    # thread_local: another thread's CUDA call (the GPU queue asking for free memory)
                    # must not invalidate this capture, nor fail because of it.
                    with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                        lane.graph_logits = lane.model(**kwargs).logits[:, -1]
            except Exception as exc:  # noqa: BLE001 - any capture failure: decode eagerly, say why
                self._graph_error = f"{type(exc).__name__}: {exc}"[:300]
                lane.graph_logits = None
            else:
                lane.graph = graph
                with self._lock:
                    graph.replay()
                return lane.graph_logits
        lane.eager_steps += 1
        return self._run(lane, **kwargs).logits[:, -1]

    # ---------------------------------------------------------------------------------- generation
    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def prompt(self, messages, *, thinking: bool, system: str = "") -> str:
        return build_prompt(self.tokenizer, messages, thinking=thinking, system=system)

    def token_stream(self, pane: str, prompt_ids: list[int], sampling: Sampling) -> Iterator[int | None]:
        """New token ids one by one; ``None`` marks a stop token (the stream then ends)."""
        for events in Batch(self, [(pane, list(prompt_ids), 0)], sampling):
            for _row, tok in events:
                yield tok
                if tok is None:
                    return

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
        """Both panes streamed together: one batch, one forward pass per token for both."""
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

    def generate_batch(self, requests: list[BatchRequest], *, batch_size: int = 16,
                       progress: Callable[[int, int], None] | None = None) -> list[Reply]:
        """Replies to many requests, ``batch_size`` prompts at a time, every pane of a prompt in the same
        batch (and with the same random numbers). Requests with different sampling settings (all but
        the seed) go to different batches. ``progress(done, total)`` counts finished replies."""
        replies: list[Reply | None] = [None] * len(requests)
        order: dict[tuple, list[int]] = {}
        for i, req in enumerate(requests):
            order.setdefault((sampling_key(req.sampling),), []).append(i)
        done = 0
        total = len(requests)
        for idx in order.values():
            prompts: list[int] = []  # group ids in first-seen order
            for i in idx:
                if requests[i].group not in prompts:
                    prompts.append(requests[i].group)
            for start in range(0, len(prompts), max(1, batch_size)):
                chunk = set(prompts[start:start + batch_size])
                members = [i for i in idx if requests[i].group in chunk]
                gens = [self.stream(requests[i].pane, requests[i].messages, requests[i].sampling,
                                    system=requests[i].system, until=requests[i].until) for i in members]

                def on_done(r: int, reply: Reply, members=members) -> None:
                    nonlocal done
                    replies[members[r]] = reply
                    done += 1
                    if progress is not None:
                        progress(done, total)

                for _ in CompareStream(gens, [requests[i].group for i in members], on_done=on_done):
                    pass
        return [r for r in replies if r is not None]

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


@dataclass
class BatchRequest:
    """One reply to generate in :meth:`ChatEngine.generate_batch`. Requests with the same ``group``
    (the panes of one prompt) decode in the same batch with the same random numbers."""

    pane: str
    messages: list
    sampling: Sampling
    group: int
    system: str = ""
    until: Callable[[str], bool] | None = field(default=None, compare=False)


# ------------------------------------------------------------------------------------------ helpers
def _is_hf(model) -> bool:
    try:
        from transformers import PreTrainedConfig
    except ImportError:  # older transformers
        from transformers import PretrainedConfig as PreTrainedConfig
    return isinstance(getattr(model, "config", None), PreTrainedConfig)


def _model_dtype(model):
    import torch

    dtype = getattr(model, "dtype", None)
    if isinstance(dtype, torch.dtype) and dtype.is_floating_point:
        return dtype
    for p in model.parameters():
        if p.dtype.is_floating_point:
            return p.dtype
    return torch.float32


def _additive(allowed, dtype):
    """A boolean "may attend" mask as the additive float mask attention implementations take."""
    import torch

    zero = torch.zeros((), dtype=dtype, device=allowed.device)
    return torch.where(allowed, zero, torch.finfo(dtype).min)


def _gather_rows(lanes: list[_Lane], parts: list, n_rows: int):
    """The lanes' logits back in row order, as one float32 (rows, vocab) tensor."""
    import torch

    if len(lanes) == 1 and lanes[0].rows == list(range(n_rows)):
        return parts[0].float()
    out = torch.empty((n_rows, parts[0].shape[-1]), dtype=torch.float32, device=parts[0].device)
    for lane, part in zip(lanes, parts):
        out.index_copy_(0, lane.index, part.float())
    return out


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


def _unmaskable(model, layers) -> str | None:
    """Why masking ``lora_B`` would not remove the whole adapter from a row (None: it would)."""
    from peft.tuners.lora import LoraLayer

    for name, cfg in model.peft_config.items():
        kind = getattr(cfg, "peft_type", None)
        if kind is not None and str(getattr(kind, "value", kind)) != "LORA":
            return f"adapter {name!r} is {cfg.peft_type}, not LoRA"
        if getattr(cfg, "use_dora", False):
            return f"adapter {name!r} uses DoRA"
    for layer in layers:
        if not isinstance(layer, LoraLayer):
            return f"{type(layer).__name__} (modules_to_save or another tuner) holds trained weights"
        if getattr(layer, "merged", False):
            return "the adapter is merged into the weights"
        if any(len(getattr(layer, attr, {}) or {}) for attr in ("lora_embedding_A", "lora_magnitude_vector")):
            return "LoRA on embeddings or DoRA magnitudes"
        if not len(layer.lora_B):
            return f"{type(layer).__name__} has no lora_B"
    return None


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
