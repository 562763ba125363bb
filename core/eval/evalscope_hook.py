"""EvalScope benchmarks (gsm8k, ceval, cmmlu, ...) for both panes, through the local OpenAI endpoint.

The loaded engine is served by core.eval.openai_server on 127.0.0.1 (model ``base``: adapter off,
``tuned``: the fine-tune); EvalScope runs in its own process against it (``eval_type openai_api``),
once per pane and thinking mode, with identical settings for both panes: the same benchmark files,
the same chat template (the engine's), the same sampling and seed, and ``enable_thinking`` passed as
``chat_template_kwargs``, as vLLM takes it.

Benchmarks read their files from ``EvalConfig.evalscope_data_dir`` when it is set: one subfolder per
benchmark, in the layout of its dataset repository (what Hugging Face or ModelScope give you:
``README.md`` naming the configs and their split files, e.g. ``gsm8k/main/test.jsonl`` or
``ceval/computer_network/val.csv``). Only the subsets found there are run. Without a data folder,
EvalScope downloads the benchmarks itself, which needs the network.

EvalScope is optional (requirements-eval.txt). It may live in a separate environment
(``EvalConfig.evalscope_python``), since its dependencies need not agree with the training stack's.
Without it the evaluation records why this part was skipped and how to get it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

INSTALL_HINT = ("EvalScope is not installed. Install it with `pip install -r requirements-eval.txt` (or into a "
                "separate environment, then set evalscope_python to its python) and run the evaluation again; "
                "the endpoint is started for you.")
MODES = {"both": ("off", "on"), "off": ("off",), "on": ("on",)}

# Runs inside EvalScope's Python: one TaskConfig per (pane, mode), one after the other.
RUNNER = """
import json, sys
from evalscope import TaskConfig, run_task
job = json.load(open(sys.argv[1], encoding="utf-8"))
for task in job["tasks"]:
    print("qwentune: task", task["model"], task["work_dir"], flush=True)
    run_task(task_cfg=TaskConfig(**task))
"""


def evalscope_python(cfg) -> str:
    return (getattr(cfg, "evalscope_python", "") or "").strip() or sys.executable


def evalscope_available(python: str | None = None) -> bool:
    if python in (None, "", sys.executable):
        import importlib.util

        return importlib.util.find_spec("evalscope") is not None
    try:
        proc = subprocess.run([python, "-c", "import evalscope"], capture_output=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


def _configs_of(folder: Path) -> list[str]:
    """The dataset configs (EvalScope's subsets) a local benchmark folder declares in its README."""
    readme = folder / "README.md"
    names = []
    if readme.is_file():
        text = readme.read_text(encoding="utf-8", errors="replace")
        if text.startswith("---"):
            head = text.split("---", 2)[1]
            names = re.findall(r"^\s*-\s*config_name:\s*['\"]?([^'\"\n]+?)['\"]?\s*$", head, flags=re.M)
    if not names:  # no card: a subset per subfolder
        names = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    return names


def dataset_args(benchmarks: list[str], data_dir: str) -> dict:
    """EvalScope's dataset_args for files on disk: each benchmark's folder and the subsets it has."""
    from core.eval.errors import EvalError

    if not data_dir:
        return {}
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise EvalError("no such folder", "evalscope_data_dir", str(root))
    args = {}
    for name in benchmarks:
        folder = root / name
        if not folder.is_dir():
            raise EvalError(f"no folder for benchmark {name!r} in the data folder (expected {folder})",
                            "evalscope_data_dir", str(root))
        subsets = _configs_of(folder)
        entry: dict = {"dataset_id": str(folder.resolve())}
        if subsets:
            entry["subset_list"] = subsets
        args[name] = entry
    return args


def generation_config(cfg, thinking: bool) -> dict:
    """The same sampling for both panes: Qwen3's recommendation for the mode (or greedy), the eval seed."""
    from core.chat.sampling import resolve

    s = resolve(thinking=thinking, greedy=cfg.greedy, seed=cfg.seed, max_new_tokens=cfg.evalscope_max_tokens)
    gen = {"max_tokens": s.max_new_tokens, "seed": s.seed,
           "extra_body": {"chat_template_kwargs": {"enable_thinking": thinking}}}
    if s.greedy:
        gen["temperature"] = 0.0
    else:
        gen.update(temperature=s.temperature, top_p=s.top_p)
        gen["extra_body"].update(top_k=s.top_k, min_p=s.min_p)
    return gen


def read_scores(work_dir: Path, pane: str) -> dict[str, float]:
    """{benchmark: score} from EvalScope's report files under ``work_dir`` (reports/<model>/<name>.json)."""
    scores = {}
    for path in sorted(Path(work_dir).glob(f"**/reports/{pane}/*.json")):
        try:
            report = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        name = report.get("dataset_name") or path.stem
        score = _primary_score(report)
        if score is not None:
            scores[str(name)] = round(score, 4)
    return scores


def _primary_score(report: dict) -> float | None:
    """The report's headline score: ``score`` (EvalScope 0.x / early 1.x) or its primary metric's."""
    score = report.get("score")
    if isinstance(score, (int, float)) and not isinstance(score, bool):
        return float(score)
    metrics = [m for m in report.get("metrics") or [] if isinstance(m, dict)]
    primary = report.get("primary_metric_identity")
    for m in metrics:
        if primary is None or m.get("identity") == primary or m.get("name") == primary:
            value = m.get("score")
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
    return None


def run_evalscope(engine, cfg, *, work_dir: Path, progress=None) -> dict:
    """Every benchmark of ``cfg.evalscope_datasets``, each pane, each thinking mode; scores per mode
    and pane ({"scores": {"off": {"base": {"gsm8k": 0.4}, "tuned": {...}}, "on": ...}})."""
    from core.eval.openai_server import OpenAIServer

    benchmarks = list(cfg.evalscope_datasets)
    python = evalscope_python(cfg)
    if not evalscope_available(python):
        return {"skipped": INSTALL_HINT if python == sys.executable else
                f"{python} cannot import evalscope: {INSTALL_HINT}"}
    args = dataset_args(benchmarks, cfg.evalscope_data_dir)
    modes = MODES[cfg.evalscope_thinking]
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    out: dict = {"benchmarks": benchmarks, "limit": cfg.evalscope_limit, "modes": list(modes),
                 "data_dir": cfg.evalscope_data_dir or None, "work_dir": str(work_dir), "scores": {}}
    served = {"n": 0}
    subsets = sum(len(a.get("subset_list") or [None]) for a in args.values()) or len(benchmarks)
    expected = cfg.evalscope_limit * subsets * len(engine.panes) * len(modes)

    stop: dict = {}

    def on_request(_pane: str) -> None:
        served["n"] += 1
        if progress and not stop:
            try:
                progress("evalscope", min(served["n"], expected), expected)
            except BaseException as exc:  # a cancel: stopped below, in the thread that waits for EvalScope
                stop["exc"] = exc

    with OpenAIServer(engine, on_request=on_request) as server:
        tasks = []
        for mode in modes:
            for pane in engine.panes:
                tasks.append({"model": pane, "api_url": server.url, "api_key": "EMPTY", "eval_type": "openai_api",
                              "datasets": benchmarks, "dataset_args": args, "limit": cfg.evalscope_limit,
                              "generation_config": generation_config(cfg, mode == "on"), "seed": cfg.seed,
                              "work_dir": str(work_dir / mode / pane), "no_timestamp": True,
                              "eval_batch_size": cfg.generate_batch})
        job = work_dir / "job.json"
        job.write_text(json.dumps({"tasks": tasks}, ensure_ascii=False, indent=2), encoding="utf-8")
        log = work_dir / "evalscope.log"
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with log.open("w", encoding="utf-8") as f:
            proc = subprocess.Popen([python, "-c", RUNNER, str(job)], stdout=f, stderr=subprocess.STDOUT,
                                    cwd=work_dir, env=env)
            while proc.poll() is None:
                if stop:
                    proc.terminate()
                    proc.wait(timeout=30)
                    break
                try:
                    proc.wait(timeout=0.5)
                except subprocess.TimeoutExpired:
                    pass
    if stop:
        raise stop["exc"]
    if proc.returncode != 0:
        tail = log.read_text(encoding="utf-8", errors="replace")[-1500:]
        out["error"] = f"EvalScope stopped with exit status {proc.returncode}; its log: {log}\n{tail}"
    for mode in modes:
        out["scores"][mode] = {pane: read_scores(work_dir / mode / pane, pane) for pane in engine.panes}
    out["requests"] = served["n"]
    if progress:
        progress("evalscope", expected, expected)
    return out
