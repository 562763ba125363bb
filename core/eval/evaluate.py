"""Base vs fine-tuned, on the run's own held-out data (`python -m core eval --run DIR`).

Three measurements, each for the base model (adapter off) and the fine-tuned model (adapter on),
from one model in memory (core.chat.engine):

1. **Held-out loss / perplexity** on the mix's eval split, with exactly the training mask
   (core.data.render, the run's assistant-only and empty-think options; rows over the run's
   max_seq_len are left out, as the trainer leaves them out). Loss is the mean over trained tokens.
2. **Thinking-mode control**: N prompts, each answered with ``enable_thinking`` off and on. Off
   complies when the reply holds no reasoning; on complies when it does. A rate per model and mode.
   This catches the known failure of reasoning-heavy mixes: a model that ignores the switch.
3. **Answer accuracy** on held-out rows that carry a final answer (``\\boxed{...}`` in the reference
   reply or ``meta["expected_answer"]``), compared after normalisation (core.eval.answers).

Results go to ``<run>/eval.json`` (``eval-<checkpoint>.json`` for a checkpoint); :func:`results_table`
and :func:`results_figure` turn them into the table and plotly chart the GUI shows.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

from core.config import ChatConfig, EvalConfig
from core.data.conversation import Conversation, Message
from core.eval.errors import EvalError
from core.settings import write_json_atomic

Progress = Callable[[str, int, int], None]  # (stage, done, total)

# Used when the mix has too few plain prompts for the thinking-mode check.
FALLBACK_PROMPTS = [
    "What is 17 * 23?",
    "Explain in two sentences why the sky is blue.",
    "Write a haiku about autumn.",
    "If a train travels 120 km in 1.5 hours, what is its average speed?",
    "用一句话解释什么是机器学习。",
    "List three prime numbers greater than 50.",
    "How many days are there in a leap year?",
    "把“早上好”翻译成英文。",
]


def _noop(stage: str, done: int, total: int) -> None:
    return None


# ------------------------------------------------------------------------------------- the data
def run_dir_of(target: str | Path) -> Path:
    """The run folder of a run or of one of its checkpoints."""
    from core.runfolder import RunFolder

    path = Path(target).expanduser().resolve()
    run = RunFolder.enclosing(path)
    if run is None:
        raise EvalError("not a run folder or a checkpoint of one (no config.yaml found)", "run", str(path))
    return run.path


def mix_dir_of(run_dir: Path) -> Path:
    """The run's mix: ``<run>/mix`` (built for an inline mix) or the config's data.mix_dir."""
    from core.config import load_run_config
    from core.data.mixdir import MANIFEST
    from core.runfolder import RunFolder

    folder = RunFolder(run_dir)
    if (folder.mix / MANIFEST).is_file():
        return folder.mix
    cfg = load_run_config(folder.config)
    if cfg.data.mix_dir:
        mix = Path(cfg.data.mix_dir).expanduser()
        if not mix.is_absolute() and not mix.is_dir():
            mix = (folder.path / mix)
        if (mix / MANIFEST).is_file():
            return mix
        raise EvalError(f"the run's mix folder {mix} is missing; give another with --mix", "data.mix_dir",
                        str(folder.config))
    raise EvalError("the run has no saved mix (no <run>/mix and no data.mix_dir); give one with --mix",
                    "data.mix_dir", str(folder.config))


def load_rows(mix_dir: Path, split: str) -> list[Conversation]:
    from core.data.mixdir import read_mix_dir

    train, evals, _manifest = read_mix_dir(mix_dir)
    return evals if split == "eval" else train


def _sample(items: list, n: int, seed: int) -> list:
    if n <= 0 or n >= len(items):
        return list(items)
    idx = sorted(random.Random(seed).sample(range(len(items)), n))
    return [items[i] for i in idx]


# ------------------------------------------------------------------------------------ 1. the loss
def loss_rows(convs: list[Conversation], tokenizer, *, max_seq_len: int, assistant_only: bool = True,
              train_empty_think: bool = True) -> tuple[list[tuple[list[int], list[int]]], dict]:
    """(input_ids, mask) per row with the training mask; rows the trainer would drop are dropped."""
    from core.data.render import MaskOptions, render_batch

    options = MaskOptions(assistant_only=assistant_only, train_empty_think=train_empty_think)
    rows, too_long, no_target = [], 0, 0
    for r in render_batch(convs, tokenizer, options=options):
        if r.n_tokens > max_seq_len:
            too_long += 1
        elif r.n_trained == 0:
            no_target += 1
        else:
            rows.append((r.input_ids, r.mask))
    return rows, {"rows_in": len(convs), "too_long": too_long, "no_target": no_target}


def eval_loss(engine, rows: list[tuple[list[int], list[int]]], *, batch_size: int = 4,
              progress: Progress = _noop) -> dict:
    out = {}
    panes = engine.panes
    for k, pane in enumerate(panes):
        progress(f"loss:{pane}", k, len(panes))
        results = engine.token_nll(pane, rows, batch_size=batch_size)
        total = sum(r[0] for r in results)
        tokens = sum(r[1] for r in results)
        loss = total / tokens if tokens else float("nan")
        out[pane] = {"loss": round(loss, 6), "ppl": round(math.exp(min(loss, 50.0)), 4) if tokens else None,
                     "tokens": tokens, "rows": len(rows)}
    progress("loss", len(panes), len(panes))
    return out


# ------------------------------------------------------------------------ 2. thinking-mode control
def control_prompts(convs: list[Conversation], n: int, seed: int) -> list[list[Message]]:
    """Up to ``n`` prompts: each row up to its first user turn; fallback questions fill the rest."""
    prompts = []
    for conv in convs:
        msgs = []
        for m in conv.messages:
            if m.role == "system":
                msgs.append(Message("system", m.content))
            elif m.role == "user":
                if m.content.strip() and not m.content.lstrip().startswith("<tool_response>"):
                    msgs.append(Message("user", m.content))
                    prompts.append(msgs)
                break
            else:
                break
    prompts = _sample(prompts, n, seed)
    for text in FALLBACK_PROMPTS:
        if len(prompts) >= n:
            break
        prompts.append([Message("user", text)])
    return prompts[:n]


def _split_system(msgs: list[Message]) -> tuple[str, list[Message]]:
    system = msgs[0].content if msgs and msgs[0].role == "system" else ""
    return system, [m for m in msgs if m.role != "system"]


def _reasoning_seen(text: str, started_in_think: bool) -> bool:
    from core.chat.thinking import split_reasoning

    return split_reasoning(text, started_in_think=started_in_think, partial=True).has_reasoning


def eval_thinking(engine, prompts: list[list[Message]], cfg: EvalConfig, *, progress: Progress = _noop,
                  keep_samples: int = 4) -> dict:
    """Per model: share of replies without reasoning when thinking is off, with it when on.

    All prompts of one mode are generated in batches of ``cfg.generate_batch`` prompts, each with
    both panes in the same batch (same seed per prompt, so the panes differ only by model)."""
    from core.chat.engine import BatchRequest
    from core.chat.sampling import resolve
    from core.chat.thinking import prompt_opens_think

    panes = engine.panes
    total = len(prompts) * 2 * len(panes)
    counts = {pane: {"off_ok": 0, "on_ok": 0, "n": len(prompts)} for pane in panes}
    samples = []
    done_before = 0
    for thinking in (False, True):
        reqs = []
        for i, msgs in enumerate(prompts):
            system, body = _split_system(msgs)
            s = resolve(thinking=thinking, greedy=cfg.greedy, seed=cfg.seed + i,
                        max_new_tokens=cfg.control_max_new_tokens)
            opens = prompt_opens_think(engine.prompt(body, thinking=thinking, system=system))
            for pane in panes:
                # Stop as soon as the answer is known: reasoning seen decides both modes.
                reqs.append(BatchRequest(pane, body, s, group=i, system=system,
                                         until=lambda text, o=opens: _reasoning_seen(text, o)))
        replies = engine.generate_batch(reqs, batch_size=cfg.generate_batch,
                                        progress=lambda d, _t, base=done_before: progress("thinking", base + d, total))
        done_before += len(reqs)
        for req, reply in zip(reqs, replies):
            reasoned = reply.split.has_reasoning
            ok = reasoned if thinking else not reasoned
            counts[req.pane]["on_ok" if thinking else "off_ok"] += int(ok)
            if req.group < keep_samples:
                samples.append((req.group, thinking, {
                    "prompt": req.messages[-1].content[:300], "thinking": thinking, "pane": req.pane, "ok": ok,
                    "reasoning": reply.reasoning[:300], "answer": reply.answer[:300]}))
    samples.sort(key=lambda x: x[:2])  # per prompt: off then on, panes in order (the sort is stable)
    out: dict = {}
    for pane, c in counts.items():
        n = c["n"]
        out[pane] = {"off_rate": round(c["off_ok"] / n, 4) if n else None,
                     "on_rate": round(c["on_ok"] / n, 4) if n else None,
                     "off_ok": c["off_ok"], "on_ok": c["on_ok"], "n": n}
    out["samples"] = [x[2] for x in samples]
    return out


# ------------------------------------------------------------------------------ 3. answer accuracy
def answer_rows(convs: list[Conversation]) -> list[tuple[list[Message], str, bool]]:
    """(prompt messages, expected answer, reference reasoned) for rows that carry a final answer. A
    prompt set's row (GRPO) is its own prompt; it is answered thinking, as GRPO trains it to."""
    from core.eval.answers import expected_answer

    out = []
    for conv in convs:
        expected = expected_answer(conv)
        if conv.kind == "prompt":
            if expected is not None:
                out.append((list(conv.messages), expected, True))
            continue
        last = max((i for i, m in enumerate(conv.messages) if m.role == "assistant"), default=None)
        if expected is None or last is None:
            continue
        prompt = conv.messages[:last]
        if not prompt or prompt[-1].role not in ("user", "tool"):
            continue
        out.append((prompt, expected, bool(conv.messages[last].reasoning)))
    return out


def eval_accuracy(engine, rows: list[tuple[list[Message], str, bool]], cfg: EvalConfig, *,
                  progress: Progress = _noop, keep_samples: int = 6) -> dict:
    """Share of rows whose final answer matches, per model; generated in batches like the thinking check."""
    from core.chat.engine import BatchRequest
    from core.chat.sampling import resolve
    from core.eval.answers import answers_match, extract_answer

    panes = engine.panes
    correct = {pane: 0 for pane in panes}
    ran_out = {pane: 0 for pane in panes}
    samples = []
    reqs, expected_of, thinking_of = [], {}, {}
    for i, (prompt, expected, reasoned) in enumerate(rows):
        thinking = {"on": True, "off": False}.get(cfg.accuracy_thinking, reasoned)
        s = resolve(thinking=thinking, greedy=cfg.greedy, seed=cfg.seed + i,
                    max_new_tokens=cfg.answer_max_new_tokens)
        system, body = _split_system(prompt)
        expected_of[i], thinking_of[i] = expected, thinking
        for pane in panes:
            reqs.append(BatchRequest(pane, body, s, group=i, system=system))
    replies = engine.generate_batch(reqs, batch_size=cfg.generate_batch,
                                    progress=lambda d, t: progress("accuracy", d, t))
    for req, reply in zip(reqs, replies):
        i = req.group
        predicted = extract_answer(reply.answer)
        ok = answers_match(predicted, expected_of[i])
        correct[req.pane] += int(ok)
        if reply.finish_reason == "length" and reply.split.in_reasoning:
            ran_out[req.pane] += 1
        if i < keep_samples:
            samples.append({"prompt": req.messages[-1].content[:300], "pane": req.pane, "expected": expected_of[i],
                            "predicted": predicted, "ok": ok, "thinking": thinking_of[i]})
    out: dict = {}
    for pane in panes:
        n = len(rows)
        out[pane] = {"correct": correct[pane], "total": n, "rate": round(correct[pane] / n, 4) if n else None,
                     "ran_out_while_reasoning": ran_out[pane]}
    out["samples"] = samples
    return out


# -------------------------------------------------------------------------------------- the run
def result_path(target: str | Path) -> Path:
    from core.runfolder import RunFolder

    return RunFolder(run_dir_of(target)).eval_result(target)


def evaluate(target: str | Path, cfg: EvalConfig | None = None, chat_cfg: ChatConfig | None = None, *,
             limit: int | None = None, mix_dir: str | Path | None = None, engine=None,
             progress: Progress = _noop, save: bool = True, runs_dir: str | Path | None = None,
             gpu_check: bool = True) -> dict:
    """Evaluate a run (or a checkpoint of one): base vs fine-tuned. Returns (and saves) the results.

    ``gpu_check``: the loader asks the GPU queue (core.gpu_queue) before loading; False when the
    caller has asked already (or the user forced the start)."""
    from core.config import load_run_config

    cfg = cfg or EvalConfig()
    if limit is not None and limit > 0:
        cfg = replace(cfg, loss_rows=min(cfg.loss_rows or limit, limit),
                      control_prompts=min(cfg.control_prompts, limit),
                      accuracy_rows=min(cfg.accuracy_rows, limit))
    run_dir = run_dir_of(target)
    run_cfg = load_run_config(run_dir / "config.yaml")
    mix = Path(mix_dir) if mix_dir else mix_dir_of(run_dir)
    convs = load_rows(mix, cfg.split)
    if not convs:
        hint = ("the mix has no eval split: build it with eval_fraction > 0, or use split 'train'"
                if cfg.split == "eval" else "the mix has no rows")
        raise EvalError(hint, "split", str(mix))
    started = time.time()
    progress("load", 0, 1)
    if engine is None:
        from core.chat.loader import load_engine

        engine = load_engine(str(target), chat_cfg, runs_dir=runs_dir, gpu_check=gpu_check)
    progress("load", 1, 1)
    result: dict = {
        "created": datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds"),
        "target": str(Path(target).expanduser().resolve()),
        "run": run_dir.name,
        "mix_dir": str(mix),
        "split": cfg.split,
        "model": {k: engine.info.get(k) for k in ("base", "adapter", "tuned", "device", "dtype", "four_bit")},
        "settings": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__},
        "panes": list(engine.panes),
    }
    # 1. loss
    loss_convs = _sample(convs, cfg.loss_rows, cfg.seed)
    rows, dropped = loss_rows(loss_convs, engine.tokenizer, max_seq_len=run_cfg.train.max_seq_len,
                              assistant_only=run_cfg.train.assistant_only_loss,
                              train_empty_think=run_cfg.train.train_empty_think)
    result["loss"] = eval_loss(engine, rows, batch_size=cfg.batch_size, progress=progress) if rows else {}
    result["loss_rows"] = dropped
    # 2. thinking-mode control
    if cfg.control_prompts > 0:
        prompts = control_prompts(convs, cfg.control_prompts, cfg.seed)
        result["thinking"] = eval_thinking(engine, prompts, cfg, progress=progress)
    # 3. accuracy
    if cfg.accuracy_rows > 0:
        arows = _sample(answer_rows(convs), cfg.accuracy_rows, cfg.seed)
        result["accuracy"] = eval_accuracy(engine, arows, cfg, progress=progress) if arows else {
            "note": "no held-out row carries a final answer (\\boxed{...} or expected_answer)"}
    if cfg.evalscope_datasets:
        from core.eval.evalscope_hook import run_evalscope

        result["evalscope"] = run_evalscope(engine, cfg, work_dir=run_dir / "evalscope", progress=progress)
    result["seconds"] = round(time.time() - started, 1)
    if save:
        path = result_path(target)
        write_json_atomic(path, result)
        result["saved_to"] = str(path)
    return result


def load_results(target: str | Path) -> dict | None:
    """The saved evaluation of ``target``; None if there is none. A damaged file is an EvalError."""
    from core.settings import DamagedFile, read_json

    path = result_path(target)
    try:
        return read_json(path, expect=dict)
    except DamagedFile as exc:
        raise EvalError(f"the saved evaluation is unreadable ({exc.message}); evaluate again to replace it",
                        "", str(path)) from None


# --------------------------------------------------------------------------------- presentation
METRICS = [
    # (key, label, section, field, higher is better)
    ("loss", "Held-out loss", "loss", "loss", False),
    ("ppl", "Perplexity", "loss", "ppl", False),
    ("think_off", "Thinking off: replies without reasoning", "thinking", "off_rate", True),
    ("think_on", "Thinking on: replies with reasoning", "thinking", "on_rate", True),
    ("accuracy", "Answer accuracy", "accuracy", "rate", True),
]


def results_table(result: dict) -> list[dict]:
    """Rows {metric, label, base, tuned, change, better} for every measurement present."""
    rows = []
    for key, label, section, field, higher in METRICS:
        sec = result.get(section) or {}
        base = (sec.get("base") or {}).get(field)
        tuned = (sec.get("tuned") or {}).get(field)
        if base is None and tuned is None:
            continue
        change = None if base is None or tuned is None else round(tuned - base, 4)
        better = None if change is None or change == 0 else ((change > 0) == higher)
        rows.append({"metric": key, "label": label, "base": base, "tuned": tuned, "change": change,
                     "better": better})
    rows.extend(benchmark_rows(result))
    return rows


def benchmark_rows(result: dict) -> list[dict]:
    """EvalScope scores as table rows: one per benchmark and thinking mode, base vs fine-tuned."""
    es = result.get("evalscope") or {}
    rows = []
    for mode, panes in (es.get("scores") or {}).items():
        benches = sorted({b for scores in panes.values() for b in scores})
        for bench in benches:
            base = (panes.get("base") or {}).get(bench)
            tuned = (panes.get("tuned") or {}).get(bench)
            change = None if base is None or tuned is None else round(tuned - base, 4)
            rows.append({"metric": f"evalscope:{bench}:{mode}", "label": f"{bench} (thinking {mode})",
                         "base": base, "tuned": tuned, "change": change,
                         "better": None if not change else change > 0})
    return rows


def _wrap(label: str, width: int = 16) -> str:
    """Break a chart label into lines (plotly does not wrap tick labels)."""
    lines, line = [], ""
    for word in label.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return "<br>".join([*lines, line])


def results_figure(result: dict, labels: dict[str, str] | None = None, pane_names: dict[str, str] | None = None):
    """A plotly figure, base vs fine-tuned: the rates on one panel, the held-out loss on the other
    (perplexity is exp(loss): it is in the table, not on a second, incomparable scale)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    labels = labels or {}
    pane_names = pane_names or {"base": "base", "tuned": "fine-tuned"}
    rows = results_table(result)
    rates = [r for r in rows if r["metric"] in ("think_off", "think_on", "accuracy")
             or r["metric"].startswith("evalscope:")]
    losses = [r for r in rows if r["metric"] == "loss"]
    fig = make_subplots(rows=1, cols=2, column_widths=[0.7, 0.3], horizontal_spacing=0.12,
                        subplot_titles=(labels.get("title_rates", "Rates (higher is better)"),
                                        labels.get("title_loss", "Held-out loss (lower is better)")))
    colors = {"base": "#8c8c8c", "tuned": "#1f77b4"}
    for pane in ("base", "tuned"):
        for col, items in ((1, rates), (2, losses)):
            xs = [_wrap(labels.get(r["metric"], r["label"])) for r in items if r[pane] is not None]
            ys = [r[pane] for r in items if r[pane] is not None]
            if xs:
                fig.add_trace(go.Bar(name=pane_names[pane], x=xs, y=ys, marker_color=colors[pane],
                                     legendgroup=pane, showlegend=col == 1 or not rates,
                                     text=[f"{y:.3g}" for y in ys], textposition="outside", cliponaxis=False),
                              row=1, col=col)
    fig.update_yaxes(range=[0, 1.15], row=1, col=1)
    fig.update_layout(barmode="group", height=400, margin={"l": 40, "r": 20, "t": 60, "b": 40},
                      legend={"orientation": "h", "y": 1.18, "x": 0}, template="plotly_white")
    return fig
