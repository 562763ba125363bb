"""Optional: EvalScope benchmarks (gsm8k, ...) for both panes, through the local OpenAI endpoint.

EvalScope is not a dependency; without it the evaluation records why this part was skipped and how
to get it. Its benchmarks download their datasets from ModelScope, so this part needs the network.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path


def evalscope_available() -> bool:
    return importlib.util.find_spec("evalscope") is not None


def _summary(report) -> object:
    """A JSON-able form of whatever run_task returned (its shape changed across EvalScope versions)."""
    if isinstance(report, dict):
        return {str(k): _summary(v) for k, v in report.items()}
    if isinstance(report, (list, tuple)):
        return [_summary(v) for v in report]
    for attr in ("to_dict", "model_dump", "dict"):
        fn = getattr(report, attr, None)
        if callable(fn):
            return _summary(fn())
    if isinstance(report, (str, int, float, bool)) or report is None:
        return report
    return str(report)


def run_evalscope(engine, datasets: list[str], limit: int, *, work_dir: Path, progress=None) -> dict:
    if not evalscope_available():
        return {"skipped": "EvalScope is not installed. Install it with `pip install evalscope` and run the "
                           "evaluation again; the endpoint is started for you."}
    from evalscope import TaskConfig, run_task

    try:
        from evalscope.constants import EvalType

        # EvalScope 1.x names the API mode OPENAI_API and takes the base URL; 0.x called it SERVICE
        # and took the full chat-completions URL.
        new_api = hasattr(EvalType, "OPENAI_API")
        eval_type = EvalType.OPENAI_API if new_api else EvalType.SERVICE
    except ImportError:
        new_api, eval_type = False, "service"
    from core.eval.openai_server import OpenAIServer

    out: dict = {"datasets": list(datasets), "limit": limit}
    with OpenAIServer(engine) as server:
        url = server.url if new_api else server.url + "/chat/completions"
        for k, pane in enumerate(engine.panes):
            if progress:
                progress(f"evalscope:{pane}", k, len(engine.panes))
            task = TaskConfig(model=pane, api_url=url, api_key="EMPTY", eval_type=eval_type,
                              datasets=list(datasets), limit=limit, work_dir=str(Path(work_dir) / pane),
                              generation_config={"max_tokens": 2048, "temperature": 0.0})
            out[pane] = _summary(run_task(task_cfg=task))
    return out
