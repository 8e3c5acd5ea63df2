"""Table of the README's ``nncift select --influence less`` command run once per compressor.

The runs themselves are the README command with ``--less.compressor C --out runs/less-readme-C``
(C = identity, projection, dropout, dropout-structured); this script only reads their run folders
(manifest.json, selected.jsonl) and compares each subset with the exact (identity) one.

    python bench/summarise_less_runs.py --output bench/results/less_readme.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

COMPRESSORS = ("identity", "projection", "dropout", "dropout-structured")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=Path, default=Path("runs"), help="folder holding less-readme-<compressor>/")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    manifests, picks = {}, {}
    for name in COMPRESSORS:
        folder = args.runs / f"less-readme-{name}"
        manifests[name] = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
        picks[name] = [json.loads(line)["index"] for line in (folder / "selected.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
    first = manifests["identity"]
    inputs = [item["path"] for item in first["inputs"]]
    counts = first["counts"]
    lines = ["# LESS from the README, once per compressor", "",
             "Command (README, section LESS), with `--less.compressor C --out runs/less-readme-C` for each C; table by "
             "`python bench/summarise_less_runs.py --output bench/results/less_readme.md`.", "",
             f"Inputs: {', '.join(f'`{p}`' for p in inputs)} (the last is `--targets`); pool {counts['pool']} records "
             f"(first 200 = ag_news, the target family), {counts['targets']} targets; NN-CIFT u = 0.05 "
             f"(Q1 = {first['sampled_rows']} targets × {first['sampled_cols']} candidates), k = 8192, LoRA r = 8, 2 warm-up "
             "epochs, top 5%. Ran on the shared 2-core CPU (other jobs running), so seconds are indicative only.", "",
             "| compressor | seconds (all stages) | LESS on the sampled block, s | picked | from ag_news | overlap with identity |",
             "|---|---:|---:|---:|---:|---:|"]
    exact = set(picks["identity"])
    for name in COMPRESSORS:
        stages = manifests[name]["cost"]["seconds_by_stage"]
        block = next(v for k, v in stages.items() if k.startswith("influence"))
        chosen = picks[name]
        lines.append(f"| {name} | {sum(stages.values()):.0f} | {block:.0f} | {len(chosen)} | "
                     f"{sum(i < 200 for i in chosen)} | {len(exact & set(chosen)) / len(chosen):.2f} |")
    report = "\n".join(lines) + "\n"
    print(report)
    if args.output:
        args.output.write_text(report, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
