"""The stages after SFT, through TRL: DPO and ORPO on preference rows, GRPO on prompt rows with rewards.

    mix rows -> render_preference / render_prompt (the SFT template and thinking rules) -> token ids
             -> TRL's DPOTrainer | ORPOTrainer | GRPOTrainer (the run's LoRA / QLoRA model) -> adapter

Nothing is imported at module level beyond QwenTune's own light modules (the pre-run check reads
:func:`grpo_micro_batch`). Unsloth patches TRL's trainer classes when its RL patches are applied
(core.train.backends.patch_rl, in the worker, after the backend is active), so the classes are
looked up and subclassed when a trainer is built.

Rows are tokenized here, once, and handed to TRL as token ids, so TRL neither applies a chat template
again nor appends a second end of turn: each reply ends at its ``<|im_end|>``, the last token SFT
trains. Rows that do not fit are left out and
counted, never cut (as for SFT): a preference row whose prompt + longer reply exceeds
``train.max_seq_len`` or whose prompt exceeds ``rl.max_prompt_len``; a GRPO prompt longer than
``rl.max_prompt_len``.

The reference model: with LoRA the base model with the adapter disabled is the reference, so no
second copy of the weights is held (DPO; GRPO with ``rl.kl_beta`` > 0). ORPO needs none.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

from core.choices import STAGE_MIX_KIND
from core.settings import ConfigError
from core.train.notices import Notice

PREFERENCE = ("dpo", "orpo")
SAMPLES_PER_LOG = 4  # sampled completions written to samples.jsonl per logging step
CHUNK = 1000  # rows per tokenizer call


def _log(msg: str) -> None:
    # The worker's log format (its stdout is train.log); the worker imports this module, not the reverse.
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ------------------------------------------------------------------------------------- the rows
@dataclass
class StageRows:
    """A stage's training rows as dataset columns, with the counts status.json shows (the same
    names as core.train.data.Tokenized, so the worker reports both alike)."""

    stage: str
    columns: dict[str, list] = field(default_factory=dict)
    rows_in: int = 0
    too_long: int = 0
    no_target: int = 0  # rows that are not of the stage's kind (no rejected reply, no prompt)

    @property
    def rows(self) -> int:
        first = next(iter(self.columns.values()), [])
        return len(first)

    @property
    def tokens(self) -> int:
        c = self.columns
        if "chosen_ids" in c:
            return sum(2 * len(p) + len(a) + len(b) for p, a, b in zip(c["prompt_ids"], c["chosen_ids"],
                                                                      c["rejected_ids"]))
        return sum(len(p) for p in c.get("prompt_ids", []))

    @property
    def trained_tokens(self) -> int:
        c = self.columns
        if "chosen_ids" in c:
            return sum(len(a) + len(b) for a, b in zip(c["chosen_ids"], c["rejected_ids"]))
        return 0  # GRPO trains on the completions it generates

    @property
    def input_ids(self) -> list[list[int]]:
        """The sequences one pass trains on (prompt + chosen and prompt + rejected; GRPO's prompts)."""
        c = self.columns
        if "chosen_ids" in c:
            return [p + a for p, a in zip(c["prompt_ids"], c["chosen_ids"])] + \
                   [p + b for p, b in zip(c["prompt_ids"], c["rejected_ids"])]
        return list(c.get("prompt_ids", []))

    def summary(self) -> dict:
        return {"stage": self.stage, "rows": self.rows, "rows_in": self.rows_in, "dropped_too_long": self.too_long,
                "dropped_not_stage_rows": self.no_target, "tokens": self.tokens,
                "trained_tokens": self.trained_tokens}

    def dataset(self):
        from datasets import Dataset

        # GRPO's trainer tokenizes the prompt text itself; the ids here are for the counts only.
        skip = ("prompt_ids",) if self.stage == "grpo" else ()
        return Dataset.from_dict({k: v for k, v in self.columns.items() if k not in skip})


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def preference_rows(convs, tokenizer, cfg) -> StageRows:
    """prompt_ids / chosen_ids / rejected_ids of the preference rows (core.data.render.render_preference:
    prompt + chosen is the SFT rendering of the chosen conversation up to its ``<|im_end|>``)."""
    from core.data.render import RenderError, render_preference

    out = StageRows(cfg.train.stage, {"prompt_ids": [], "chosen_ids": [], "rejected_ids": []}, rows_in=len(convs))
    texts = []
    for conv in convs:
        if conv.kind != "preference":
            out.no_target += 1
            continue
        try:
            pref = render_preference(conv, tokenizer)
        except RenderError:  # the mix checks these shapes; one that gets here anyway is counted, not trained
            out.no_target += 1
            continue
        row = pref.trained_row()  # each reply ends at its <|im_end|>, the last token SFT trains
        texts.append((row["prompt"], row["chosen"], row["rejected"]))
    for start in range(0, len(texts), CHUNK):
        part = texts[start:start + CHUNK]
        prompts = tokenizer([p for p, _, _ in part], add_special_tokens=False)["input_ids"]
        chosen = tokenizer([p + c for p, c, _ in part], add_special_tokens=False)["input_ids"]
        rejected = tokenizer([p + r for p, _, r in part], add_special_tokens=False)["input_ids"]
        for p_ids, pc_ids, pr_ids in zip(prompts, chosen, rejected):
            # The replies start where prompt and prompt + reply diverge (a merge across the boundary
            # moves it by a token); both replies share that prompt.
            cut = min(_common_prefix(p_ids, pc_ids), _common_prefix(p_ids, pr_ids))
            c_ids, r_ids = pc_ids[cut:], pr_ids[cut:]
            if not c_ids or not r_ids:
                out.no_target += 1
            elif cut > cfg.rl.max_prompt_len or cut + max(len(c_ids), len(r_ids)) > cfg.train.max_seq_len:
                out.too_long += 1
            else:
                out.columns["prompt_ids"].append(pc_ids[:cut])
                out.columns["chosen_ids"].append(c_ids)
                out.columns["rejected_ids"].append(r_ids)
    return out


def prompt_rows(convs, tokenizer, cfg) -> StageRows:
    """The GRPO prompts (core.data.render.render_prompt, thinking on) and their reference answers."""
    from core.data.render import render_prompt

    out = StageRows("grpo", {"prompt": [], "prompt_ids": [], "answer": []}, rows_in=len(convs))
    kept = []
    for conv in convs:
        if conv.kind != "prompt":
            out.no_target += 1
            continue
        answer = conv.meta.get("expected_answer") if isinstance(conv.meta, dict) else None
        kept.append((render_prompt(conv, tokenizer, thinking=True), None if answer is None else str(answer)))
    for start in range(0, len(kept), CHUNK):
        part = kept[start:start + CHUNK]
        ids = tokenizer([p for p, _ in part], add_special_tokens=False)["input_ids"]
        for (text, answer), p_ids in zip(part, ids):
            if len(p_ids) > cfg.rl.max_prompt_len:
                out.too_long += 1
                continue
            out.columns["prompt"].append(text)
            out.columns["prompt_ids"].append(p_ids)
            out.columns["answer"].append(answer)
    return out


def tokenize(cfg, convs, tokenizer) -> StageRows:
    """The rows of ``cfg.train.stage`` from the mix's conversations; an error naming the settings
    when none of them is a row this stage can train on."""
    rows = preference_rows(convs, tokenizer, cfg) if cfg.train.stage in PREFERENCE else prompt_rows(convs, tokenizer,
                                                                                                    cfg)
    if convs and rows.no_target == rows.rows_in:
        where = "data.mix_dir" if cfg.data.mix_dir else "data.mix"
        kind = STAGE_MIX_KIND[cfg.train.stage]
        what = ("a chosen and a rejected reply" if kind == "preference"
                else "a prompt ending with a user turn (and a reference answer)")
        raise ConfigError(f"train.stage {cfg.train.stage} trains on {kind} rows ({what}), and none of the "
                          f"{rows.rows_in} rows in {where} is one; build a {kind} mix, or use train.stage sft",
                          where)
    return rows


def batching_notice(stage: str) -> Notice:
    return Notice("packing_stage", stage=stage)


# ----------------------------------------------------------------------------------- rollouts
def rollout_engine(cfg, backend: str, cuda: bool) -> str:
    """How GRPO generates its completions, for ``rl.rollout`` = requested: ``vllm`` (vLLM, colocated,
    on the transformers + PEFT backend with CUDA), ``unsloth`` (Unsloth's CUDA-graph decode, through
    its patched TRL trainer), ``chat`` (the chat engine's batched decode, core.train.rollout) or
    ``trl`` (TRL's own model.generate).

    ``auto`` never gives the chat engine an Unsloth model: Unsloth replaces the attention forward with
    one that keeps its own KV cache and ignores the static cache the engine decodes with, so the
    engine's check would fail and the rollouts fall back to the slower model.generate."""
    from core.train.backends import has_package

    requested = cfg.rl.rollout
    vllm_ok = cuda and backend == "peft" and has_package("vllm")
    if requested == "vllm" and not vllm_ok:
        why = ("the vllm package is not installed (pip install vllm)" if not has_package("vllm") else
               "it needs a CUDA GPU" if not cuda else
               "it runs on model.backend peft (Unsloth's own vLLM path is not used here)")
        raise ConfigError(f"rl.rollout vllm cannot be used: {why}; use rl.rollout auto", "rl.rollout")
    unsloth_ok = cuda and backend == "unsloth"
    if requested == "unsloth" and not unsloth_ok:
        why = "it needs a CUDA GPU" if not cuda else f"this run trains on model.backend {backend}"
        raise ConfigError(f"rl.rollout unsloth cannot be used: {why}; use rl.rollout auto", "rl.rollout")
    if requested == "auto":
        return "vllm" if vllm_ok else "unsloth" if unsloth_ok else "chat"
    return requested


ROLLOUT_WORDS = {"vllm": "vLLM (colocated)", "chat": "the chat engine's batched decode",
                 "unsloth": "Unsloth's CUDA-graph decode", "trl": "TRL's model.generate"}


def grpo_micro_batch(micro_batch: int, grad_accum: int, num_generations: int, world: int = 1) -> int:
    """A micro-batch at most ``micro_batch`` whose generation batch (micro_batch x grad_accum x GPUs
    completions) holds whole groups of ``num_generations``; the smallest such one if none is below."""
    for mb in range(micro_batch, 0, -1):
        if (mb * grad_accum * world) % num_generations == 0:
            return mb
    return num_generations // math.gcd(num_generations, grad_accum * world)


# ------------------------------------------------------------------------------------ trainers
def _train_args(cfg, loaded, run_dir: Path, has_eval: bool, shared: dict, eval_batch: int | None = None) -> dict:
    """TrainingArguments shared by every stage (core.train.trainargs); ``shared``: the worker's
    resolved ``optim`` and ``report_to``."""
    from core.train.trainargs import training_args

    return training_args(cfg, loaded, run_dir, has_eval=has_eval, optim=shared["optim"],
                         report_to=shared["report_to"], eval_batch=eval_batch)


def build_trainer(cfg, loaded, train_rows: StageRows, eval_rows: StageRows | None, run_dir: Path, callbacks,
                  *, optim: str, report_to: list[str]):
    """The TRL trainer of ``cfg.train.stage`` wired to the run's model, rows and callbacks, with the
    optimizer and report targets the worker resolved (``train.optimizer``, ``train.report_to``)."""
    from core.train.backends import patch_rl

    shared = {"optim": optim, "report_to": report_to}
    stage = cfg.train.stage
    note = patch_rl(loaded.backend, stage)
    if note:
        _log("note: " + note)
    has_eval = eval_rows is not None and eval_rows.rows > 0
    if stage == "dpo":
        return _dpo(cfg, loaded, train_rows, eval_rows if has_eval else None, run_dir, callbacks, shared)
    if stage == "orpo":
        return _orpo(cfg, loaded, train_rows, eval_rows if has_eval else None, run_dir, callbacks, shared)
    if stage == "grpo":
        return _grpo(cfg, loaded, train_rows, eval_rows if has_eval else None, run_dir, callbacks, shared)
    raise ConfigError(f"train.stage {stage!r} has no trainer here", "train.stage")


def _dpo(cfg, loaded, rows, evals, run_dir, callbacks, shared):
    import trl.trainer as trl_trainer

    from core.train import lean

    base = lean.for_backend(trl_trainer.DPOTrainer, loaded.backend)

    class QwenTuneDPOTrainer(base):
        """DPO on rows tokenized by :func:`preference_rows`. TRL's own preparation would tokenize
        the texts again and append the tokenizer's eos to a reply that ends otherwise (a base
        model's ``<|endoftext|>`` after Qwen3's ``<|im_end|>``)."""

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset

    args = trl_trainer.DPOConfig(**_train_args(cfg, loaded, run_dir, evals is not None, shared), beta=cfg.rl.beta,
                                 max_length=None, precompute_ref_log_probs=False)
    trainer = QwenTuneDPOTrainer(model=loaded.model, ref_model=None, args=args, train_dataset=rows.dataset(),
                                 eval_dataset=evals.dataset() if evals else None,
                                 processing_class=loaded.tokenizer, callbacks=callbacks)
    model = trainer.model
    if "ref" in getattr(model, "peft_config", {}):
        # TRL copies a PEFT model's adapter as the reference ("ref"). The run's adapter is freshly
        # initialised (LoRA's B is zero), so the base with the adapter disabled is the same
        # reference without a second adapter in every forward, in memory, or in the saved folders.
        model.delete_adapter("ref")
    return trainer


def _orpo(cfg, loaded, rows, evals, run_dir, callbacks, shared):
    import os

    # ORPO lives in TRL's experimental package; its warning on import is known and says nothing here.
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    from core.train import lean

    class QwenTuneORPOTrainer(lean.for_backend(ORPOTrainer, loaded.backend)):
        """ORPO on rows tokenized by :func:`preference_rows` (its own tokenization would append the
        tokenizer's eos to a reply that ends otherwise, as DPO's)."""

        def tokenize_row(self, feature, model=None):
            p, c, r = feature["prompt_ids"], feature["chosen_ids"], feature["rejected_ids"]
            out = {"prompt_input_ids": p, "prompt_attention_mask": [1] * len(p)}
            for name, reply in (("chosen", c), ("rejected", r)):
                out[f"{name}_input_ids"] = p + reply
                out[f"{name}_attention_mask"] = [1] * (len(p) + len(reply))
                out[f"{name}_labels"] = [-100] * len(p) + reply
            return out

    kwargs = _train_args(cfg, loaded, run_dir, evals is not None, shared)
    kwargs["remove_unused_columns"] = False
    args = ORPOConfig(**kwargs, beta=cfg.rl.beta, max_length=cfg.train.max_seq_len)
    return QwenTuneORPOTrainer(model=loaded.model, args=args, train_dataset=rows.dataset(),
                               eval_dataset=evals.dataset() if evals else None,
                               processing_class=loaded.tokenizer, callbacks=callbacks)


def _grpo(cfg, loaded, rows, evals, run_dir, callbacks, shared):
    import trl.trainer as trl_trainer

    from core.train import lean, runs
    from core.train.rewards import build_rewards
    rl, t = cfg.rl, cfg.train
    engine = rollout_engine(cfg, loaded.backend, loaded.device == "cuda")
    _log(f"rollouts: {ROLLOUT_WORDS[engine]} (rl.rollout {rl.rollout}), {rl.num_generations} completions per "
        f"prompt of up to {rl.max_completion_len} tokens")
    runs.write_status(run_dir, rollout=engine)
    rewards = build_rewards(rl)
    if not rewards:
        raise ConfigError("train.stage grpo needs at least one reward: choose rl.rewards or give rl.reward_file",
                          "rl.rewards")
    import os

    world = int(os.environ.get("WORLD_SIZE") or 1)  # set for each rank of a ddp / fsdp run
    mb = grpo_micro_batch(t.micro_batch, t.grad_accum, rl.num_generations, world)
    if mb != t.micro_batch:
        # only an automatic micro-batch gets here: the pre-run check rejects a fixed one that splits groups
        t.micro_batch = mb
        runs.write_status(run_dir, micro_batch=mb, effective_batch=mb * t.grad_accum)
    kwargs = _train_args(cfg, loaded, run_dir, evals is not None, shared, eval_batch=rl.num_generations)
    tokenizer = loaded.tokenizer
    eos = [tokenizer.convert_tokens_to_ids(tok) for tok in ("<|im_end|>", "<|endoftext|>")
           if tok in tokenizer.get_vocab()]
    args = trl_trainer.GRPOConfig(
        **kwargs,
        beta=rl.kl_beta,
        num_generations=rl.num_generations,
        max_completion_length=rl.max_completion_len,
        temperature=rl.temperature,
        top_p=1.0,
        top_k=0,
        use_vllm=engine == "vllm",
        vllm_mode="colocate",
        log_completions=False,  # samples.jsonl takes a few per logging step instead of a parquet table
        generation_kwargs={"eos_token_id": eos} if eos else None,
    )
    trainer_cls = _grpo_class(lean.for_backend(trl_trainer.GRPOTrainer, loaded.backend))
    samples = runs.RunFolder(run_dir).samples
    trainer = trainer_cls(model=loaded.model, reward_funcs=rewards, args=args, train_dataset=rows.dataset(),
                          eval_dataset=evals.dataset() if evals else None, processing_class=tokenizer,
                          callbacks=[*callbacks, _samples_callback(samples)])
    trainer.qt_engine = engine
    trainer.qt_eos = eos or list(trainer.eos_token_ids)
    trainer.qt_samples_path = samples
    trainer.qt_counter = next((c.counter for c in callbacks if hasattr(c, "counter")), None)
    trainer.qt_rng = random.Random(t.seed)
    return trainer


def trim_samples(path: Path, last_step: int) -> None:
    """Keep the samples up to ``last_step`` (the checkpoint a resume starts from): the steps after it
    are trained, and sampled, again."""
    from core.settings import write_atomic

    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            step = json.loads(line).get("step")
        except (ValueError, AttributeError):
            continue  # a torn line from a killed run
        if isinstance(step, int) and step <= last_step:
            kept.append(line + "\n")
    write_atomic(path, "".join(kept))


def _samples_callback(path: Path):
    from transformers import TrainerCallback

    class TrimSamples(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            if args.process_index == 0:
                trim_samples(path, state.global_step)

    return TrimSamples()


def _grpo_class(base):
    """GRPOTrainer (or Unsloth's patched one) with QwenTune's rollouts, token count and samples."""

    class QwenTuneGRPOTrainer(base):
        qt_engine = "trl"
        qt_eos: list[int] = []
        qt_samples_path = None
        qt_counter = None
        qt_rng = None

        def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, *args, **kwargs):
            if self.qt_engine != "chat" or self.use_vllm or images:
                return super()._generate_single_turn(prompt_ids, images, multimodal_fields, num_generations,
                                                     *args, **kwargs)
            import torch
            from trl.models import unwrap_model_for_generation

            from core.train.rollout import generate_completions

            with unwrap_model_for_generation(self.model_wrapped, self.accelerator) as model, torch.no_grad():
                was_training = model.training
                model.eval()
                try:
                    completions = generate_completions(
                        model, self.processing_class, [list(p) for p in prompt_ids],
                        max_new_tokens=self.max_completion_length, temperature=self.temperature,
                        top_p=self.top_p if self.top_p is not None else 1.0, top_k=self.top_k or 0,
                        eos_token_ids=self.qt_eos)
                finally:
                    model.train(was_training)
            return [list(c) for c in completions], None

        def _generate(self, prompts):
            out = super()._generate(prompts)
            if self.qt_counter is not None and self.model.training:
                prompt_ids, completion_ids = out[0], out[1]
                self.qt_counter.tokens += sum(len(p) for p in prompt_ids) + sum(len(c) for c in completion_ids)
            return out

        def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
            per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
            if self.accelerator.is_main_process and self.model.training and self.qt_samples_path is not None:
                self._qt_keep_samples(inputs, prompts, completions, per_func)
            return per_func

        def _qt_keep_samples(self, inputs, prompts, completions, per_func):
            pending = getattr(self, "_qt_pending", None)
            if pending is None:
                pending = self._qt_pending = []
            if len(pending) >= SAMPLES_PER_LOG * 4:
                return
            n = len(prompts)
            picks = sorted(self.qt_rng.sample(range(n), min(SAMPLES_PER_LOG, n)))
            values = per_func[:n].tolist()  # this process's rows come first in the gathered rewards
            for i in picks:
                text = completions[i]
                pending.append({
                    "prompt": prompts[i] if isinstance(prompts[i], str) else json.dumps(prompts[i]),
                    "completion": text if isinstance(text, str) else json.dumps(text),
                    "rewards": {name: (None if math.isnan(v) else round(v, 4))
                                for name, v in zip(self.reward_func_names, values[i])},
                    "answer": inputs[i].get("answer"),
                })

        def log(self, logs, start_time=None):
            pending = getattr(self, "_qt_pending", None)
            if pending and "loss" in logs and self.accelerator.is_main_process:
                self._qt_pending = []
                picks = pending if len(pending) <= SAMPLES_PER_LOG else self.qt_rng.sample(pending, SAMPLES_PER_LOG)
                lines = "".join(json.dumps({"step": self.state.global_step, **s}, ensure_ascii=False) + "\n"
                                for s in picks)
                with open(self.qt_samples_path, "a", encoding="utf-8") as f:
                    f.write(lines)
            return super().log(logs, start_time)

    return QwenTuneGRPOTrainer


# ------------------------------------------------------------------------------- token counting
def count_tokens(trainer, counter) -> bool:
    """Count the real tokens a stage trains on into ``counter`` (core.train.callbacks.TokenCounter):
    DPO / ORPO in the collator (prompt + chosen and prompt + rejected), GRPO at generation (prompt +
    completion, see the trainer class). False when the collator cannot be wrapped."""
    if hasattr(trainer, "qt_counter"):
        trainer.qt_counter = counter
        return True
    collator = trainer.data_collator
    if collator is None:
        return False

    def n_tokens(example) -> int:
        if "chosen_ids" in example:
            return 2 * len(example["prompt_ids"]) + len(example["chosen_ids"]) + len(example["rejected_ids"])
        return len(example.get("chosen_input_ids", ())) + len(example.get("rejected_input_ids", ()))

    def counting(examples):
        batch = collator(examples)
        if not counter.paused:
            n = sum(n_tokens(e) for e in examples)
            counter.tokens += n
            if counter.first:
                counter.first = False
                counter.echo(f"first batch: {len(examples)} preference rows, {n} tokens")
        return batch

    trainer.data_collator = counting
    return True
