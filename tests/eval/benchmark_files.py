"""Small benchmark folders in each benchmark's own dataset-repository layout (a README.md card naming
the configs and their split files), written by the tests: GSM8K (jsonl, "#### answer") and C-Eval
(csv per subject: id, question, A-D, answer, explanation)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

GSM8K = [("Tom has 3 apples and buys 4 more. How many apples does he have?", "3 + 4 = 7", "7"),
         ("A box holds 6 rows of 7 eggs. How many eggs are in the box?", "6 * 7 = 42", "42"),
         ("Sara reads 12 pages a day for 5 days. How many pages does she read?", "12 * 5 = 60", "60"),
         ("There are 20 birds; 8 fly away. How many birds are left?", "20 - 8 = 12", "12"),
         ("A pen costs 3 dollars. How much do 9 pens cost?", "3 * 9 = 27", "27")]
CEVAL = [("计算机网络中，HTTP 协议默认使用的端口号是____。", ("21", "25", "80", "110"), "C"),
         ("TCP/IP 模型中，IP 协议位于____。", ("应用层", "传输层", "网络层", "数据链路层"), "C"),
         ("以下哪个是私有 IP 地址？", ("192.168.1.1", "8.8.8.8", "1.1.1.1", "114.114.114.114"), "A"),
         ("DNS 的主要作用是____。", ("域名解析", "文件传输", "发送邮件", "远程登录"), "A"),
         ("以太网的 MAC 地址长度是____位。", ("32", "48", "64", "128"), "B"),
         ("UDP 与 TCP 相比，____。", ("更可靠", "面向连接", "开销更小", "保证顺序"), "C")]
CEVAL_SUBJECT = "computer_network"


def _card(configs: dict[str, dict[str, str]]) -> str:
    lines = ["---", "configs:"]
    for name, splits in configs.items():
        lines += [f"- config_name: {name}", "  data_files:"]
        lines += [f"  - split: {split}\n    path: {path}" for split, path in splits.items()]
    return "\n".join([*lines, "---", "", "Test copy written by QwenTune's tests.", ""])


def write_gsm8k(root: Path) -> Path:
    folder = root / "gsm8k"
    (folder / "main").mkdir(parents=True, exist_ok=True)
    rows = [{"question": q, "answer": f"{why}\n#### {a}"} for q, why, a in GSM8K]
    for split, part in (("train", rows[:4]), ("test", rows)):
        (folder / "main" / f"{split}.jsonl").write_text(
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in part), encoding="utf-8")
    (folder / "README.md").write_text(_card({"main": {"train": "main/train.jsonl", "test": "main/test.jsonl"}}),
                                      encoding="utf-8")
    return folder


def write_ceval(root: Path) -> Path:
    folder = root / "ceval"
    sub = folder / CEVAL_SUBJECT
    sub.mkdir(parents=True, exist_ok=True)
    for split, part in (("dev", CEVAL[:5]), ("val", CEVAL)):
        with (sub / f"{split}.csv").open("w", encoding="utf-8", newline="") as f:
            w = csv.writer(f)
            w.writerow(["id", "question", "A", "B", "C", "D", "answer", "explanation"])
            for i, (q, choices, a) in enumerate(part):
                w.writerow([i, q, *choices, a, ""])
    (folder / "README.md").write_text(_card({CEVAL_SUBJECT: {"dev": f"{CEVAL_SUBJECT}/dev.csv",
                                                             "val": f"{CEVAL_SUBJECT}/val.csv"}}), encoding="utf-8")
    return folder


def write_benchmarks(root: Path) -> Path:
    write_gsm8k(root)
    write_ceval(root)
    return root


def answer_key() -> dict[str, str]:
    """Question text -> the answer a correct model writes (what the scripted mock model replies)."""
    key = {q: f"The answer is \\boxed{{{a}}}." for q, _why, a in GSM8K}
    key.update({q: f"答案：{a}" for q, _c, a in CEVAL})
    return key
