"""Speed of the data path: read + convert + render (chat template) + tokenize + mix + save 100,000
synthetic conversations with the real Qwen3 tokenizer (offline; ``--tokenizer demo`` for the demo
model's). Target: at most 60 s on a 2-core machine.

    .venv/bin/python bench/mix_speed.py [--rows 100000] [--tokenizer qwen3] [--record]

The text is generated fresh with the word and character frequencies of the shipped samples
(English, and Chinese for a fifth of the chats), in three formats and realistic shapes: 45% ShareGPT
chat (1-3 exchanges), 45% OpenMathReasoning-style rows with a reasoning trace, 10% OpenAI messages
with a tool call. ``--record`` appends the result, with the machine's description, to
bench/results/mix_speed.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Get the current weather.",
                                           "parameters": {"type": "object", "properties": {
                                               "city": {"type": "string"}}, "required": ["city"]}}}]
CITIES = ["Paris", "Tokyo", "Oslo", "Madrid", "Beijing", "Shanghai", "London", "Cairo"]


class TextMaker:
    """Fresh text with the word and character frequencies of the shipped samples: English sentences
    drawn word by word from their vocabulary, Chinese clauses character by character. Nothing repeats
    verbatim, so tokenizer caches see what real data gives them (common words hit, clauses miss)."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        words, hanzi = [], []
        for path in sorted((ROOT / "presets" / "samples").glob("*.jsonl")):
            for line in path.read_text(encoding="utf-8").splitlines():
                for text in _strings(json.loads(line)):
                    words += re.findall(r"[A-Za-z][A-Za-z'-]*|\d+", text)
                    hanzi += re.findall(r"[\u4e00-\u9fff]", text)
        self.words, self.hanzi = words, hanzi

    def english(self, sentences: int) -> str:
        out = []
        for _ in range(sentences):
            ws = self.rng.choices(self.words, k=self.rng.randint(6, 22))
            ws[0] = ws[0].capitalize()
            if self.rng.random() < 0.3:
                ws.insert(self.rng.randint(1, len(ws) - 1), f"{self.rng.randint(0, 9999)},")
            out.append(" ".join(ws) + self.rng.choice([".", ".", ".", "?", "!"]))
        return " ".join(out)

    def chinese(self, sentences: int) -> str:
        out = []
        for _ in range(sentences):
            clauses = ["".join(self.rng.choices(self.hanzi, k=self.rng.randint(4, 16)))
                       for _ in range(self.rng.randint(1, 3))]
            out.append("，".join(clauses) + self.rng.choice(["。", "。", "？", "！"]))
        return "".join(out)


def _strings(obj):
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)


def make_data(folder: Path, rows: int, seed: int = 0) -> dict[str, int]:
    rng = random.Random(seed)
    maker = TextMaker(rng)

    def para(lo: int, hi: int, zh: bool = False) -> str:
        n = rng.randint(lo, hi)
        return maker.chinese(n) if zh else maker.english(n)

    n_chat, n_math = int(rows * 0.45), int(rows * 0.45)
    n_tool = rows - n_chat - n_math
    with (folder / "chat.jsonl").open("w", encoding="utf-8") as f:
        for _ in range(n_chat):
            turns, zh = [], rng.random() < 0.2  # a fifth of the chats are in Chinese
            for _ in range(rng.randint(1, 3)):
                turns += [{"from": "human", "value": para(1, 3, zh)}, {"from": "gpt", "value": para(3, 8, zh)}]
            f.write(json.dumps({"conversations": turns}, ensure_ascii=False) + "\n")
    with (folder / "math.jsonl").open("w", encoding="utf-8") as f:
        for i in range(n_math):
            sol = f"<think>\n{para(8, 20)}\n</think>\n{para(1, 2)} The answer is $\\boxed{{{i}}}$."
            f.write(json.dumps({"problem": para(1, 2), "generated_solution": sol, "expected_answer": str(i)},
                               ensure_ascii=False) + "\n")
    with (folder / "tools.jsonl").open("w", encoding="utf-8") as f:
        for _ in range(n_tool):
            city = rng.choice(CITIES)
            msgs = [{"role": "user", "content": f"{para(0, 1)} What is the weather in {city}?"},
                    {"role": "assistant", "content": None, "tool_calls": [{"type": "function", "function": {
                        "name": "get_weather", "arguments": json.dumps({"city": city})}}]},
                    {"role": "tool", "content": json.dumps({"city": city, "temp": rng.randint(-10, 35)})},
                    {"role": "assistant", "content": para(1, 3)}]
            f.write(json.dumps({"messages": msgs, "tools": TOOLS}, ensure_ascii=False) + "\n")
    return {"chat": n_chat, "math": n_math, "tools": n_tool}


def machine() -> str:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 1024 / 1024:.0f} GB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return f"{os.cpu_count()} cores {cpu}{mem}, {platform.system()}, Python {platform.python_version()}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--tokenizer", default="qwen3", help="tokenizer spec (core.data.tokenizer): qwen3 (default), "
                                                         "demo, a model folder")
    p.add_argument("--record", action="store_true", help="append the result to bench/results/mix_speed.jsonl")
    args = p.parse_args()

    from core.config import MixConfig, SourceConfig
    from core.data.mix import build_mix
    from core.data.tokenizer import describe, load_tokenizer, tokenizer_info

    tokenizer = load_tokenizer(args.tokenizer)
    with tempfile.TemporaryDirectory(prefix="qwentune-bench-") as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        sizes = make_data(folder, args.rows)
        t_gen = time.perf_counter() - t0
        cfg = MixConfig(sources=[SourceConfig(path=str(folder / f"{n}.jsonl")) for n in sizes],
                        max_seq_len=4096, eval_fraction=0.01)
        stages: dict[str, float] = {}
        last = [time.perf_counter(), "start"]

        def progress(fraction: float, message: str) -> None:
            now = time.perf_counter()
            stage = message.split(" (")[0]
            stages[last[1]] = stages.get(last[1], 0.0) + now - last[0]
            last[0], last[1] = now, stage

        load_before = os.getloadavg()[0]
        t1, c1 = time.perf_counter(), time.process_time()
        result = build_mix(cfg, tokenizer, folder / "mix", progress)
        total_s, cpu_s = time.perf_counter() - t1, time.process_time() - c1
    tokens = sum(r["n_tokens"] for r in result.rows + result.eval_rows)
    record = {
        "bench": "mix_speed", "rows": result.total, "seconds": round(total_s, 1), "target_s": 60,
        "ok": total_s <= 60, "rows_per_s": round(result.total / total_s), "cpu_s": round(cpu_s, 1),
        "load_avg_before": round(load_before, 2), "tokens": tokens,
        "mean_tokens_per_row": round(tokens / max(1, result.total)), "tokenizer": describe(tokenizer_info(tokenizer)),
        "machine": machine(), "generate_data_s": round(t_gen, 1),
        "formats": {s.name: s.formats for s in result.sources},
        "stages_s": {k: round(v, 1) for k, v in stages.items() if k != "start"},
        "date": time.strftime("%Y-%m-%d"),
    }
    print(json.dumps(record, ensure_ascii=False, indent=1))
    if args.record:
        out = ROOT / "bench" / "results" / "mix_speed.jsonl"
        with out.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
        print(f"recorded in {out}")
    return 0 if record["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
