"""The GPU queue rule (core.gpu_queue) as the tabs use it: one call, an answer in the page's language.

    from gui.gpu_gate import gpu_gate
    ok, note = gpu_gate(ctx, "chat", model=base_model_folder, method="qlora", adapter_rank=16)
    if not ok:
        return note            # e.g. "Waiting for the GPU: training run ... is using it ..."
    # load / generate; show ``note`` too when it is not empty (e.g. "both fit")

Before each generation of an already loaded model, pass what it holds, so its weights are not asked
for twice: ``gpu_gate(ctx, "chat", model=..., resident_gib=torch.cuda.memory_allocated() / 2**30)``.
"""

from __future__ import annotations


def gpu_gate(ctx, kind: str, **kwargs) -> tuple[bool, str]:
    """(may the work start now, the reason in ``ctx.lang``; "" when there is nothing to say).

    ``kwargs`` go to core.gpu_queue.may_start_gpu_work (need_gib or model/method/context_len/
    adapter_rank, exclude_run, hardware). Demo mode and CPU-only machines always pass."""
    from core.gpu_queue import may_start_gpu_work

    decision = may_start_gpu_work(kind, runs_dir=ctx.runs_dir, demo=ctx.demo, **kwargs)
    quiet = decision.code in ("cpu", "idle")
    return decision.allowed, "" if quiet else ctx.t(decision.key, **decision.values)
