"""Every QwenTune setting, defined once.

YAML files, CLI flags and GUI widgets all come from these dataclasses (see ``core.settings``).
A run is described by :class:`RunConfig`; a data mix by :class:`MixConfig`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from core.choices import BACKENDS, DTYPES, HUBS, METHODS, MIX_KINDS, QUANTS, REWARDS, ROLLOUTS, STAGES, STRATEGIES
from core.settings import ConfigError, load_yaml, setting

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# Row formats (core.data.formats): conversations to imitate, then preference pairs, then prompt sets.
FORMATS = ("auto", "alpaca", "sharegpt", "messages", "reasoning", "openmath",
           "preference", "sharegpt_preference", "alpaca_preference", "messages_preference",
           "prompt", "gsm8k")
REASONING_TURNS = ("last_only", "split", "mask_earlier")
MAX_MIX_ROWS = 100_000_000  # a mix is held in memory; far beyond any fine-tuning set


# ----------------------------------------------------------------------------------------- data
@dataclass
class SourceConfig:
    """One data source of a mix."""

    path: str = setting(help="A local .json/.jsonl/.csv/.parquet file or folder, a shipped sample "
                             "name (e.g. 'samples/math_reasoning'), or a hub dataset id.")
    name: str = setting("", help="Short name shown in reports; defaults to the file or id name.")
    hub: str = setting("auto", choices=("auto", "local", "hf", "modelscope"),
                       help="Where 'path' lives. 'auto' treats existing paths as local, else a hub id.")
    split: str = setting("train", help="Hub dataset split to read.")
    subset: str = setting("", help="Hub dataset subset (configuration) name, if it has several.")
    limit: int = setting(0, minimum=0, help="Read at most this many rows (0 = all).")
    format: str = setting("auto", choices=FORMATS,
                          help="Row format. 'auto' detects it from the columns.")
    columns: dict = setting(default_factory=dict,
                            help="Explicit column mapping, e.g. {instruction: question, output: answer}.")
    instruction_in: str = setting("user", choices=("user", "system"),
                                  help="alpaca: put 'instruction' in the user turn before 'input', "
                                       "or in the system turn.")
    system_prompt: str = setting("", help="System prompt added to rows that have none.")
    ratio: float | None = setting(None, minimum=0.0,
                                  help="Share of the mix (ratios are normalised over sources).")
    count: int | None = setting(None, minimum=0, maximum=MAX_MIX_ROWS,
                                help="Absolute number of rows (instead of a ratio).")
    min_tokens: int = setting(0, minimum=0, help="Drop rows shorter than this many tokens.")
    max_tokens: int = setting(0, minimum=0, help="Drop rows longer than this (0 = use max_seq_len).")

    def validate(self) -> None:
        if not self.path.strip():
            raise ConfigError("a source needs a path, sample name or dataset id", "path")
        if self.ratio is not None and self.count is not None:
            raise ConfigError("give a ratio or a count, not both", "count")
        if self.ratio is not None and not math.isfinite(self.ratio):
            raise ConfigError(f"must be a finite number (a share such as 75 or 0.25), got {self.ratio}", "ratio")


@dataclass
class MixConfig:
    """Several sources mixed by ratio into one training set."""

    sources: list[SourceConfig] = setting(default_factory=list, help="The sources to mix.")
    seed: int = setting(3407, help="Seed for sampling and shuffling; the same seed gives the same mix.")
    upsample: bool = setting(False, help="Allow repeating rows of a scarce source to reach its ratio. "
                                         "Off: the mix shrinks to fit the scarcest source.")
    total: int = setting(0, minimum=0, maximum=MAX_MIX_ROWS,
                         help="Target number of rows (0 = as many as the ratios allow).")
    max_seq_len: int = setting(2048, minimum=16, help="Longest row in tokens, as in training.")
    overlong: str = setting("drop", choices=("drop", "truncate"),
                            help="Rows over max_seq_len: drop them (safe) or truncate them "
                                 "(corrupts reasoning traces).")
    eval_fraction: float = setting(0.0, minimum=0.0, maximum=0.5,
                                   help="Share of the mixed rows held out as an eval split.")
    shuffle: bool = setting(True, help="Shuffle the mixed rows.")
    tokenizer: str = setting("qwen3", help="Tokenizer that renders the rows and counts their tokens (length "
                                           "report, drops): 'qwen3' (the real Qwen3 tokenizer, offline; every "
                                           "Qwen3 size shares it), 'demo' (only for the demo model), a model "
                                           "folder, a catalog key (e.g. qwen3-8b) or a hub id. A run checks it "
                                           "against its model's tokenizer.")
    reasoning_turns: str = setting(
        "last_only", choices=REASONING_TURNS,
        help="Conversations with reasoning in earlier turns: Qwen3's template drops the reasoning of "
             "replies before the last user turn. last_only: render as the official template does (those "
             "replies train with no think block). split: one row per such reply, each rendered as the last "
             "turn (think block kept, every reply trained once). mask_earlier: keep the official text, but "
             "replies that lost their reasoning get no loss.")
    dedupe: bool = setting(False, help="Drop exact duplicate rows (same rendered text), keeping the first. "
                                       "Duplicates are reported either way.")
    kind: str = setting(
        "auto", choices=("auto", *MIX_KINDS),
        help="What the rows are for. sft: conversations to imitate; preference: a prompt with a chosen and a "
             "rejected reply (dpo, orpo); prompt: a prompt with a reference answer (grpo). auto: the kind of the "
             "first source's rows (chosen/rejected columns make it preference; prompt sets with an answer but no "
             "reply, or GSM8K's '#### answer', make it prompt; anything else sft). A mix holds one kind.")

    def validate(self) -> None:
        if not self.tokenizer.strip():
            raise ConfigError("give a tokenizer: 'qwen3', 'demo', a model folder, a catalog key or a hub id",
                              "tokenizer")
        if not self.sources:
            raise ConfigError("a mix needs at least one source", "sources")
        if not math.isfinite(self.eval_fraction):
            raise ConfigError(f"must be a finite number, got {self.eval_fraction}", "eval_fraction")
        has_ratio = [s.ratio is not None for s in self.sources]
        has_count = [s.count is not None for s in self.sources]
        if any(has_ratio) and not all(r or c for r, c in zip(has_ratio, has_count)):
            raise ConfigError("when one source has a ratio, every source needs a ratio or a count",
                              "sources")


# ---------------------------------------------------------------------------------------- model
@dataclass
class ModelConfig:
    name_or_path: str = setting("demo", help="Catalog key (e.g. qwen3-8b), local model folder, "
                                             "hub id, or 'demo' for the tiny offline model.")
    method: str = setting("qlora", choices=METHODS,
                          help="lora: 16-bit base weights. qlora: 4-bit base weights, about 3x "
                               "less memory, slightly slower.")
    quant: str = setting("auto", choices=QUANTS,
                         help="QLoRA weights: Unsloth dynamic 4-bit checkpoint, plain bnb 4-bit "
                              "checkpoint, or quantize the 16-bit weights to nf4 on load.")
    hub: str = setting("hf", choices=HUBS, help="Hub to download from.")
    backend: str = setting("auto", choices=BACKENDS,
                           help="auto: Unsloth when a CUDA GPU and unsloth are present, else "
                                "transformers + PEFT.")
    dtype: str = setting("auto", choices=DTYPES,
                         help="Compute dtype. auto: bf16 where the GPU supports it, fp16 on older "
                              "GPUs, fp32 on CPU.")
    trust_remote_code: bool = setting(False, help="Run code shipped with the model. Qwen3 needs none.")


@dataclass
class LoraConfig:
    r: int = setting(32, minimum=1, maximum=1024, help="LoRA rank: more capacity, more memory.")
    alpha: int = setting(32, minimum=1, help="LoRA alpha; scale = alpha / r (alpha / sqrt(r) with rsLoRA).")
    dropout: float = setting(0.0, minimum=0.0, maximum=0.9,
                             help="LoRA dropout. 0 is fastest with Unsloth.")
    target_modules: list[str] = setting(default_factory=lambda: list(ALL_LINEAR),
                                        choices=tuple(ALL_LINEAR),
                                        help="Projections that get adapters; all 7 is best quality.")
    use_rslora: bool = setting(False, help="Rank-stabilised LoRA scaling (alpha / sqrt(r)).")

    def validate(self) -> None:
        if not self.target_modules:
            raise ConfigError("choose at least one target module", "target_modules")


@dataclass
class TrainConfig:
    stage: str = setting("sft", choices=STAGES,
                         help="sft: supervised fine-tuning on conversations. dpo / orpo: preference tuning on "
                              "prompt + chosen + rejected rows. grpo: reinforcement learning with rewards on "
                              "prompts with a reference answer (see the rl section).")
    gpus: str = setting("auto", help="GPUs to train on: auto (every visible GPU for ddp / fsdp, the first "
                                     "for single), a count (2), or a list of ids (0,1).")
    strategy: str = setting("single", choices=STRATEGIES,
                            help="single: one GPU. ddp: one process per GPU, each holds the whole model "
                                 "(effective batch = micro_batch x grad_accum x GPUs). fsdp: the model is "
                                 "sharded over the GPUs (16-bit LoRA on the transformers + PEFT backend).")
    learning_rate: float = setting(2e-4, minimum=0.0, maximum=1.0, help="Peak learning rate.")
    lr_scheduler: str = setting("linear", choices=("linear", "cosine", "constant",
                                                   "constant_with_warmup"),
                                help="Learning-rate schedule after warmup.")
    warmup_steps: int = setting(5, minimum=0, help="Steps of linear warmup.")
    epochs: float = setting(1.0, minimum=0.0, help="Passes over the data (ignored when max_steps > 0).")
    max_steps: int = setting(0, minimum=0, help="Stop after this many optimizer steps (0 = use epochs).")
    micro_batch: int | str = setting("auto", minimum=1, suggest=("auto", 1, 2, 4, 8, 16, 32),
                                     help="Rows per GPU step; the main memory knob, and bigger is faster. "
                                          "auto: the largest micro-batch the memory estimate says fits "
                                          "this GPU with 10% of it left free, with the effective batch "
                                          "kept at 2 x grad_accum rows (accumulation shrinks as the "
                                          "micro-batch grows); 2 without a GPU.")
    grad_accum: int = setting(4, minimum=1, help="Micro-batches per optimizer step; "
                                                 "effective batch = micro_batch x grad_accum "
                                                 "(2 x grad_accum with micro_batch auto).")
    max_seq_len: int = setting(2048, minimum=16, help="Longest row in tokens.")
    weight_decay: float = setting(0.01, minimum=0.0, help="AdamW weight decay.")
    max_grad_norm: float = setting(1.0, minimum=0.0, help="Clip the gradient norm to this (0 = no clipping).")
    optimizer: str = setting("auto", choices=("auto", "adamw_8bit", "paged_adamw_8bit",
                                              "adamw_torch"),
                             help="auto: 8-bit AdamW on GPU, plain AdamW on CPU.")
    seed: int = setting(3407, help="Seed for weights init of LoRA and data order.")
    assistant_only_loss: bool = setting(True, help="Train on assistant replies only (recommended).")
    train_empty_think: bool = setting(True, help="Also train the empty <think></think> block of "
                                                  "non-reasoning replies, which teaches the "
                                                  "non-thinking mode.")
    packing: str = setting("auto", choices=("auto", "off", "padding_free", "packing", "bucket"),
                           help="How rows form a micro-batch. bucket: rows of similar length side by "
                                "side, as many as fit micro_batch x max_seq_len tokens (no packed "
                                "segments, plain attention; fastest measured on mixed lengths). packing: "
                                "rows packed into full max_seq_len sequences, kept apart in attention "
                                "(slower without a variable-length attention kernel). padding_free: no "
                                "pad tokens, micro_batch rows per step. off: padded batches (fastest when "
                                "rows are all about max_seq_len long). auto: off when rows fill "
                                "micro-batches, else bucket.")
    gradient_checkpointing: str = setting("unsloth", choices=("unsloth", "on", "off"),
                                          help="unsloth: offload activations to CPU RAM (longest "
                                               "context). on: recompute. off: fastest, most memory.")
    autocast: str = setting("auto", choices=("auto", "on", "off"),
                            help="Autocast of the forward pass to the model's 16-bit dtype (the LoRA weights "
                                 "stay fp32). auto: off where Unsloth's LoRA kernels run every adapter (a "
                                 "bf16 model, lora.dropout 0, sft), which cast the adapter to the activations' "
                                 "dtype themselves, so autocast only adds host work to every operation; on "
                                 "elsewhere. on: always (Unsloth's own default). off: never.")
    logging_steps: int = setting(1, minimum=1, help="Write metrics every N steps.")
    save_steps: int = setting(50, minimum=1, help="Save a resumable checkpoint every N steps.")
    save_total_limit: int = setting(2, minimum=1, help="Keep at most this many checkpoints.")
    eval_steps: int = setting(0, minimum=0, help="Evaluate every N steps (0 = at the end only).")
    report_to: str = setting("none", choices=("none", "tensorboard", "wandb", "trackio"),
                             help="Opt-in experiment tracking.")

    def validate(self) -> None:
        mb = self.micro_batch
        if isinstance(mb, str):
            text = mb.strip().lower()
            if text.isdigit() and int(text) >= 1:
                self.micro_batch = int(text)  # a GUI text box or a quoted YAML number
            elif text == "auto":
                self.micro_batch = "auto"
            else:
                raise ConfigError(f"expected a whole number >= 1 or 'auto', got {mb!r}", "train.micro_batch")


@dataclass
class RLConfig:
    """Preference (dpo, orpo) and reinforcement (grpo) stages; ignored by sft."""

    beta: float = setting(0.1, minimum=0.0, help="dpo: how far the policy may move from the reference "
                                                  "model (DPO's beta). orpo: weight of the odds-ratio term "
                                                  "(ORPO's lambda).")
    kl_beta: float = setting(0.0, minimum=0.0, help="grpo: KL penalty towards the base model (0 = none, "
                                                     "and no reference model is kept).")
    max_prompt_len: int = setting(512, minimum=8, help="dpo / orpo / grpo: longest prompt in tokens.")
    max_completion_len: int = setting(1024, minimum=8, help="grpo: longest generated completion in tokens.")
    num_generations: int = setting(4, minimum=2, help="grpo: completions sampled per prompt; rewards are "
                                                      "compared within each group.")
    temperature: float = setting(1.0, minimum=0.0, maximum=2.0, help="grpo: sampling temperature of the "
                                                                     "rollouts.")
    rewards: list[str] = setting(default_factory=lambda: ["answer", "format"], choices=REWARDS,
                                 help="grpo: built-in rewards, summed. answer: the final answer (\\boxed "
                                      "or last number) equals the reference. format: a think block opened "
                                      "and closed, the answer after it. length: shorter correct answers "
                                      "score higher.")
    reward_file: str = setting("", help="grpo: a Python file with your own reward function(s), added to "
                                        "the built-in ones (signature in docs/train.md).")
    rollout: str = setting("auto", choices=ROLLOUTS,
                           help="grpo: how completions are generated. chat: the chat engine's fast batched "
                                "decode. unsloth: Unsloth's CUDA-graph decode (backend unsloth on a CUDA "
                                "GPU). trl: TRL's own generate. vllm: vLLM in the same process (needs the "
                                "vllm package, a CUDA GPU and backend peft). auto: vllm where it can run, "
                                "else unsloth on the unsloth backend, else chat.")


@dataclass
class DataConfig:
    mix_dir: str = setting("", help="A mix folder saved by the Data tab or `python -m core mix`.")
    mix: MixConfig | None = setting(None, help="An inline mix, built when the run starts.")

    def validate(self) -> None:
        if not self.mix_dir and self.mix is None:
            raise ConfigError("give data.mix_dir (a saved mix folder) or an inline data.mix", "mix_dir")
        if self.mix_dir and self.mix is not None:
            raise ConfigError("give data.mix_dir or data.mix, not both", "mix")


@dataclass
class RunConfig:
    """One training run: what `python -m core train CONFIG.yaml` reads."""

    name: str = setting("", help="Run name; the folder runs/<name>. Empty: generated from model and time.")
    runs_dir: str = setting("runs", help="Folder that holds run folders.")
    model: ModelConfig = setting(default_factory=ModelConfig, help="Base model.")
    lora: LoraConfig = setting(default_factory=LoraConfig, help="Adapter.")
    train: TrainConfig = setting(default_factory=TrainConfig, help="Optimisation.")
    rl: RLConfig = setting(default_factory=RLConfig, help="Preference and reinforcement stages.")
    data: DataConfig = setting(default_factory=DataConfig, help="Training data.")


# ----------------------------------------------------------------------------------- chat, eval
@dataclass
class SamplingConfig:
    """How the chat panes and the evaluation generate text. Both panes always share these values.
    Empty sampling values follow Qwen3's recommendation for the mode (see core.chat.sampling)."""

    thinking: bool = setting(True, help="enable_thinking: the model reasons in a <think> block before "
                                        "it answers. Off: it answers at once.")
    temperature: float | None = setting(None, minimum=0.0, maximum=2.0,
                                        help="Randomness of sampling (0 = greedy). Empty: Qwen3's "
                                             "recommendation, 0.6 with thinking, 0.7 without.")
    top_p: float | None = setting(None, minimum=0.0, maximum=1.0,
                                  help="Sample only from the most likely tokens that together reach "
                                       "this probability. Empty: 0.95 with thinking, 0.8 without.")
    top_k: int | None = setting(None, minimum=0, maximum=1000,
                                help="Sample only from the k most likely tokens (0 = no limit). Empty: 20.")
    min_p: float | None = setting(None, minimum=0.0, maximum=1.0,
                                  help="Drop tokens less likely than min_p times the most likely one. "
                                       "Empty: 0 (off).")
    presence_penalty: float = setting(0.0, minimum=0.0, maximum=2.0,
                                      help="Lower the score of tokens already generated; Qwen3 suggests "
                                           "up to 1.5 when a (quantized) model repeats itself.")
    greedy: bool = setting(False, help="Always take the most likely token: deterministic, but Qwen3 "
                                       "warns that greedy thinking can loop.")
    max_new_tokens: int = setting(1024, minimum=1, maximum=131072,
                                  help="Longest reply in tokens, reasoning included.")
    seed: int = setting(0, minimum=0, help="Sampling seed. Both panes use it, so they differ only by "
                                           "the model.")


@dataclass
class ChatConfig:
    """What the chat panes load: a run, a checkpoint, a model folder or a hub id."""

    base_model: str = setting("", help="Base model to compare a merged model against (a catalog key, "
                                       "folder or hub id). Empty: the run's base model.")
    device: str = setting("auto", choices=("auto", "cuda", "cpu"),
                          help="auto: the GPU when there is one, else the CPU.")
    dtype: str = setting("auto", choices=("auto", "bfloat16", "float16", "float32"),
                         help="Weights dtype. auto: bf16 where the GPU supports it, fp16 on older "
                              "GPUs, fp32 on CPU.")
    quant: str = setting("auto", choices=("auto", "none", "4bit"),
                         help="Base weights in chat. auto: 4-bit when the run trained with QLoRA "
                              "(as trained, and 3x less memory), else 16-bit.")


@dataclass
class EvalConfig:
    """Base vs fine-tuned evaluation on the run's held-out data (`python -m core eval`)."""

    split: str = setting("eval", choices=("eval", "train"),
                         help="Rows to evaluate: the mix's held-out eval split, or its train split "
                              "(a memorisation check).")
    loss_rows: int = setting(200, minimum=0, help="Rows for held-out loss and perplexity (0 = all).")
    batch_size: int = setting(4, minimum=1, maximum=256, help="Rows per forward pass for the loss.")
    generate_batch: int = setting(8, minimum=1, maximum=512,
                                  help="Prompts generated together in the thinking and answer checks, "
                                       "each with both panes in the same batch (more: faster on a GPU, "
                                       "more memory for the KV cache).")
    control_prompts: int = setting(8, minimum=0, help="Prompts for the thinking-mode check, each "
                                                      "answered with thinking on and off (0 = skip).")
    control_max_new_tokens: int = setting(256, minimum=8,
                                          help="Token budget per reply in the thinking-mode check.")
    accuracy_rows: int = setting(32, minimum=0, help="Rows with a final answer (\\boxed{...} or "
                                                     "expected_answer) to check (0 = skip).")
    answer_max_new_tokens: int = setting(2048, minimum=8,
                                         help="Token budget per reply in the answer check, reasoning "
                                              "included; too small and long reasoning never answers.")
    accuracy_thinking: str = setting("auto", choices=("auto", "on", "off"),
                                     help="Thinking in the answer check. auto: on for rows whose "
                                          "reference reply has reasoning, off for the rest.")
    greedy: bool = setting(False, help="Greedy decoding in the generation checks (else the mode's "
                                       "Qwen3 sampling with the seed below).")
    seed: int = setting(0, minimum=0, help="Seed for sampling and for picking rows.")
    evalscope_datasets: list[str] = setting(default_factory=list,
                                            help="EvalScope benchmarks to run as well (e.g. gsm8k), "
                                                 "through a local OpenAI-compatible endpoint; needs "
                                                 "`pip install evalscope`. Empty: none.")
    evalscope_limit: int = setting(20, minimum=1, help="Questions per EvalScope benchmark.")
    evalscope_data_dir: str = setting("", help="Folder with the benchmarks' files on disk, one subfolder "
                                               "per benchmark (gsm8k/, ceval/, cmmlu/, ...) in "
                                               "EvalScope's own layout. Empty: EvalScope downloads them "
                                               "from ModelScope (needs the network).")
    evalscope_thinking: str = setting("both", choices=("both", "off", "on"),
                                      help="Thinking mode of the EvalScope benchmarks: both runs each "
                                           "benchmark twice, with enable_thinking off and on.")
    evalscope_max_tokens: int = setting(2048, minimum=16,
                                        help="Token budget per EvalScope answer, reasoning included.")
    evalscope_python: str = setting("", help="Python interpreter of an environment with EvalScope "
                                             "(pip install -r requirements-eval.txt), when it is not "
                                             "installed beside QwenTune. Empty: this one.")


def load_run_config(path) -> RunConfig:
    return load_yaml(RunConfig, path)


def load_mix_config(path) -> MixConfig:
    return load_yaml(MixConfig, path)
