"""Which Qwen3 fits which card: every catalog model x method judged against a GPU's memory.

verdict  fits   the estimate leaves at least 10% of the card free
         tight  it fits, with less than 10% headroom (other programs or a longer row may OOM)
         no     it does not fit
The best pick is the largest model that fits with headroom (16-bit LoRA before QLoRA for the same
model, since it trains the unquantized weights).

Several cards (:func:`recommend_for_cards`): every model x method is judged per card for ddp (each
card holds the whole model; the Unsloth backend) and fsdp (the model sharded over the cards;
transformers + PEFT), and gets the strategy to use: ddp where it fits (no sharding traffic, and the
faster backend), else fsdp. "Qwen3-32B LoRA 16-bit fits 2 x 48 GB with fsdp" is such a row.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from core.hardware.catalog import ModelEntry, load_catalog
from core.hardware.detect import HardwareReport
from core.hardware.estimate import HEADROOM, Coefficients, estimate_training, load_coefficients

METHOD_ORDER = ("lora", "qlora")
MULTI_STRATEGIES = ("ddp", "fsdp")  # in order of preference when both fit
METHOD_WORDS = {"lora": "LoRA 16-bit", "qlora": "QLoRA 4-bit"}
SEQ_STEP = 256
VERDICT_ORDER = {"fits": 0, "tight": 1, "no": 2}


@dataclass
class Recommendation:
    model: str
    display: str
    method: str
    est_gib: float
    verdict: str
    max_seq_len: int  # longest sequence that fits with headroom at micro-batch 1 (0: none)
    micro_batch: int  # suggested micro-batch at seq_len (0: does not fit)
    seq_len: int
    params_b: float
    vram_gib: float
    headroom_gib: float
    gpu: int = 0
    card: str = ""
    breakdown: dict = field(default_factory=dict)
    best: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def verdict_for(est_gib: float, vram_gib: float) -> str:
    if est_gib <= vram_gib * (1 - HEADROOM):
        return "fits"
    return "tight" if est_gib <= vram_gib else "no"


def _est(entry: ModelEntry, method: str, seq_len: int, micro_batch: int, opts: dict, c: Coefficients):
    extra = {}
    if opts.get("stage") == "grpo":
        # The rollouts decode all of a step's completions at once: micro_batch auto's rows per card.
        from core.config import TrainConfig
        from core.train.autobatch import effective_batch

        extra["generation_batch"] = max(micro_batch, opts.get("rows") or effective_batch(TrainConfig().grad_accum))
    return estimate_training(entry.arch, method=method, seq_len=seq_len, micro_batch=micro_batch,
                             coefficients=c, **{k: v for k, v in opts.items() if k != "rows"}, **extra)


def stage_rl(rl=None) -> dict:
    """The rl settings a recommendation is judged at: core.config.RLConfig's, or the given ones
    (an RLConfig or a dict of its fields)."""
    from core.config import RLConfig

    base = RLConfig()
    out = {k: getattr(base, k) for k in ("max_prompt_len", "max_completion_len", "num_generations", "kl_beta")}
    if rl is not None:
        get = rl.get if isinstance(rl, dict) else (lambda k, d=None: getattr(rl, k, d))
        out.update({k: get(k) for k in out if get(k) is not None})
    return out


def strategy_options(strategy: str, gpus: int, opts: dict) -> dict:
    """Estimator options of one strategy: fsdp trains on transformers + PEFT with recompute."""
    out = {**opts, "strategy": strategy, "gpus": gpus}
    if strategy == "fsdp":
        out.update(backend="peft", grad_ckpt="on" if opts.get("grad_ckpt") == "unsloth" else opts.get("grad_ckpt"))
    return out


def max_seq_len(entry: ModelEntry, method: str, vram_gib: float, opts: dict, c: Coefficients) -> int:
    """Longest multiple of 256 (up to the model's context) that fits with headroom at batch 1. For
    grpo: the longest prompt + completion, the prompt at rl.max_prompt_len and the completion in
    steps of 256."""
    budget = vram_gib * (1 - HEADROOM)
    grpo = opts.get("stage") == "grpo"
    prompt = int(stage_rl(opts.get("rl"))["max_prompt_len"]) if grpo else 0
    lo, hi = 0, max(entry.context_len - prompt, 0) // SEQ_STEP  # in steps; the estimate grows with length

    def fits(steps: int) -> bool:
        if grpo:
            rl = {**stage_rl(opts.get("rl")), "max_completion_len": steps * SEQ_STEP}
            return _est(entry, method, prompt + steps * SEQ_STEP, 1, {**opts, "rl": rl}, c).total_gib <= budget
        return _est(entry, method, steps * SEQ_STEP, 1, opts, c).total_gib <= budget

    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return prompt + lo * SEQ_STEP if lo else 0


def suggest_micro_batch(entry: ModelEntry, method: str, seq_len: int, vram_gib: float, opts: dict,
                        c: Coefficients, rows: int | None = None) -> int:
    """What ``train.micro_batch: auto`` picks on this card at the default effective batch (1 when
    only a tight fit at batch 1 is possible, 0 when nothing fits). ``rows``: this card's share of
    the step's rows on several cards (core.train.autobatch.share_rows)."""
    from core.config import TrainConfig
    from core.train.autobatch import choose_micro_batch

    choice = choose_micro_batch(entry.arch, vram_gib=vram_gib, grad_accum=TrainConfig().grad_accum, method=method,
                                seq_len=seq_len, coefficients=c, rows=rows,
                                **{k: v for k, v in opts.items() if k != "rows"})
    if choice.fits:
        return choice.micro_batch
    return 1 if _est(entry, method, seq_len, 1, opts, c).total_gib <= vram_gib else 0


def row_length(seq_len: int, opts: dict) -> int:
    """The tokens of one row a recommendation is judged at: rl's prompt + completion for grpo."""
    if opts.get("stage") == "grpo":
        rl = stage_rl(opts.get("rl"))
        return int(rl["max_prompt_len"]) + int(rl["max_completion_len"])
    return seq_len


def _base_opts(rank: int, backend: str, grad_ckpt: str, stage: str, rl) -> dict:
    opts = {"rank": rank, "backend": backend, "grad_ckpt": grad_ckpt}
    if stage != "sft":
        opts.update(stage=stage, rl=stage_rl(rl))
    return opts


def recommend_for_vram(vram_gib: float, *, seq_len: int = 2048, rank: int = 16, backend: str = "unsloth",
                       grad_ckpt: str = "unsloth", catalog: dict[str, ModelEntry] | None = None,
                       coefficients: Coefficients | None = None, gpu: int = 0, card: str = "",
                       stage: str = "sft", rl=None) -> list[Recommendation]:
    """Every catalog model x method for one card, best first (fits > tight > no, then larger).
    ``stage`` / ``rl`` (train.stage and the rl settings, default RLConfig's): judge preference or
    GRPO training instead of SFT (for grpo the rows' length is rl's prompt + completion, not
    ``seq_len``)."""
    catalog = catalog if catalog is not None else load_catalog()
    c = coefficients or load_coefficients()
    opts = _base_opts(rank, backend, grad_ckpt, stage, rl)
    out = []
    for entry in catalog.values():
        for method in METHOD_ORDER:
            est = _est(entry, method, seq_len, 1, opts, c)
            out.append(Recommendation(
                model=entry.key, display=entry.display, method=method, est_gib=round(est.total_gib, 2),
                verdict=verdict_for(est.total_gib, vram_gib),
                max_seq_len=max_seq_len(entry, method, vram_gib, opts, c),
                micro_batch=suggest_micro_batch(entry, method, seq_len, vram_gib, opts, c),
                seq_len=row_length(seq_len, opts), params_b=entry.params_b, vram_gib=round(vram_gib, 2),
                headroom_gib=round(vram_gib - est.total_gib, 2), gpu=gpu, card=card,
                breakdown=dict(est.breakdown)))
    return _ranked(out)


def best_pick(recs: list[Recommendation]) -> Recommendation | None:
    fitting = [r for r in recs if r.verdict == "fits"]
    if not fitting:
        return None
    return min(fitting, key=lambda r: (-r.params_b, METHOD_ORDER.index(r.method)))


@dataclass
class MultiRecommendation:
    """One model x method on ``gpus`` cards of ``vram_gib`` each; every figure is per card."""

    model: str
    display: str
    method: str
    strategy: str  # the one to use: ddp where it fits, else fsdp (the better verdict when neither does)
    est_gib: float  # per card, with that strategy
    verdict: str
    ddp_gib: float
    fsdp_gib: float
    ddp_verdict: str
    fsdp_verdict: str
    micro_batch: int  # what micro_batch auto picks per card with that strategy (0: does not fit)
    max_seq_len: int  # longest sequence that fits with headroom at micro-batch 1 with that strategy
    effective_batch: int  # rows per optimizer step over all cards with micro_batch auto, default accumulation
    seq_len: int
    params_b: float
    gpus: int
    vram_gib: float
    headroom_gib: float
    breakdown: dict = field(default_factory=dict)
    best: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    def sentence(self) -> str:
        """E.g. "Qwen3-32B LoRA 16-bit fits 2 x 48 GB with fsdp (about 41.5 GiB per card)"."""
        word = {"fits": "fits", "tight": "just fits", "no": "does not fit"}[self.verdict]
        text = f"{self.display} {METHOD_WORDS[self.method]} {word} {self.gpus} x {self.vram_gib:g} GB"
        if self.verdict == "no":
            return text + f" (about {min(self.ddp_gib, self.fsdp_gib):.1f} GiB per card at best)"
        return text + f" with {self.strategy} (about {self.est_gib:.1f} GiB per card)"


def _pick_strategy(verdicts: dict[str, str], gib: dict[str, float]) -> str:
    # The better verdict; between equals the preferred strategy, unless neither fits (then the
    # smaller need, the one closer to fitting).
    return min(MULTI_STRATEGIES, key=lambda k: (VERDICT_ORDER[verdicts[k]], gib[k] if verdicts[k] == "no" else 0,
                                                MULTI_STRATEGIES.index(k)))


def recommend_for_cards(gpus: int, vram_gib: float, *, seq_len: int = 2048, rank: int = 16,
                        backend: str = "unsloth", grad_ckpt: str = "unsloth",
                        catalog: dict[str, ModelEntry] | None = None,
                        coefficients: Coefficients | None = None, stage: str = "sft",
                        rl=None) -> list[MultiRecommendation]:
    """Every catalog model x method on ``gpus`` cards of ``vram_gib`` each (the smallest card when
    they differ: every card must hold its share), best first. ``stage`` / ``rl``: as for
    recommend_for_vram."""
    from core.config import TrainConfig
    from core.train.autobatch import share_rows

    catalog = catalog if catalog is not None else load_catalog()
    c = coefficients or load_coefficients()
    # micro_batch auto shares the step's rows over the cards (each card fits its share).
    share, _ = share_rows(TrainConfig().grad_accum, gpus)
    base = {**_base_opts(rank, backend, grad_ckpt, stage, rl), "rows": share}
    out = []
    for entry in catalog.values():
        for method in METHOD_ORDER:
            ests = {k: _est(entry, method, seq_len, 1, strategy_options(k, gpus, base), c) for k in MULTI_STRATEGIES}
            verdicts = {k: verdict_for(e.total_gib, vram_gib) for k, e in ests.items()}
            chosen = _pick_strategy(verdicts, {k: e.total_gib for k, e in ests.items()})
            opts = strategy_options(chosen, gpus, base)
            est = ests[chosen]
            out.append(MultiRecommendation(
                model=entry.key, display=entry.display, method=method, strategy=chosen,
                est_gib=round(est.total_gib, 2), verdict=verdicts[chosen],
                ddp_gib=round(ests["ddp"].total_gib, 2), fsdp_gib=round(ests["fsdp"].total_gib, 2),
                ddp_verdict=verdicts["ddp"], fsdp_verdict=verdicts["fsdp"],
                micro_batch=suggest_micro_batch(entry, method, seq_len, vram_gib,
                                                {k: v for k, v in opts.items() if k != "rows"}, c, rows=share),
                max_seq_len=max_seq_len(entry, method, vram_gib, opts, c),
                effective_batch=share * gpus, seq_len=row_length(seq_len, opts), params_b=entry.params_b,
                gpus=gpus, vram_gib=round(vram_gib, 2), headroom_gib=round(vram_gib - est.total_gib, 2),
                breakdown=dict(est.breakdown)))
    return _ranked(out)


def _ranked(out: list) -> list:
    """Recommendations in the order the tab shows them (fits first, bigger models first), the best
    pick marked."""
    out.sort(key=lambda r: (VERDICT_ORDER[r.verdict], -r.params_b, METHOD_ORDER.index(r.method)))
    pick = best_pick(out)
    if pick is not None:
        pick.best = True
    return out


def multi_card(report: HardwareReport, gpus: int | None = None, **kwargs) -> dict | None:
    """The several-card plan of ``report``: its first ``gpus`` cards (default all), judged at the
    smallest card's memory. None for one card."""
    n = len(report.gpus) if gpus is None else gpus
    cards = report.gpus[:n]
    if n < 2 or len(cards) < n:
        return None
    vram = min(g.total_gib for g in cards)
    rows = recommend_for_cards(n, vram, **kwargs)
    best = next((r for r in rows if r.best), None)
    return {"gpus": n, "vram_gib": round(vram, 2), "ids": [g.index for g in cards],
            "cards": [g.name for g in cards], "recommendations": [r.to_dict() for r in rows],
            "best": best.to_dict() if best else None,
            "sentence": best.sentence() if best else
            f"No Qwen3 fits {n} x {vram:g} GB with 10% headroom at {kwargs.get('seq_len', 2048)} tokens."}


def recommend(report: HardwareReport, *, seq_len: int = 2048, rank: int = 16, backend: str = "unsloth",
              grad_ckpt: str = "unsloth", gpus: int | None = None, stage: str = "sft", rl=None) -> dict:
    """{"gpus": [...], "recommendations": [...], "best": {...} | None, "multi": {...} | None,
    "message": str}.

    Each GPU gets its own rows (``gpu`` and ``card`` say which); ``best`` is the best pick over all
    cards. ``multi`` is the plan for training on ``gpus`` of them together (default: all, when there
    are several; see :func:`multi_card`). Without a GPU the lists are empty and ``message`` says why."""
    catalog = load_catalog()
    c = load_coefficients()
    rows: list[Recommendation] = []
    cache: dict[float, list[Recommendation]] = {}
    for g in report.gpus:
        if g.total_gib not in cache:
            cache[g.total_gib] = recommend_for_vram(g.total_gib, seq_len=seq_len, rank=rank, backend=backend,
                                                    grad_ckpt=grad_ckpt, catalog=catalog, coefficients=c,
                                                    stage=stage, rl=rl)
        for r in cache[g.total_gib]:
            rows.append(Recommendation(**{**r.to_dict(), "gpu": g.index, "card": g.name}))
    best = best_pick(rows)
    best_gpus = {}
    for g in report.gpus:
        pick = best_pick([r for r in rows if r.gpu == g.index])
        best_gpus[g.index] = pick
    return {
        "gpus": [g.to_dict() for g in report.gpus],
        "recommendations": [r.to_dict() for r in rows],
        "best": best.to_dict() if best else None,
        "best_per_gpu": [p.to_dict() if p else None for p in best_gpus.values()],
        "multi": multi_card(report, gpus, seq_len=seq_len, rank=rank, backend=backend, grad_ckpt=grad_ckpt,
                            catalog=catalog, coefficients=c, stage=stage, rl=rl),
        "seq_len": seq_len,
        "stage": stage,
        "rl": stage_rl(rl) if stage != "sft" else None,
        "message": report.message,
        "system": {"driver_version": report.driver_version, "cuda_version": report.cuda_version,
                   "ram_total_gib": report.ram_total_gib, "ram_available_gib": report.ram_available_gib,
                   "disk_free_gib": report.disk_free_gib, "simulated": report.simulated},
    }
