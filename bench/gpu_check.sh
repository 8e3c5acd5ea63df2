#!/usr/bin/env bash
# The GPU path, checked end to end on a CUDA machine: `nncift select` with DELIFT, LESS and SelectIT on
# `--device cuda --dtype bfloat16`, LoRA fine-tuning on TRL's SFTTrainer (bf16, gradient accumulation 4, gradient
# checkpointing; its tokens/s in the table) and evaluation (fine-tuning and ICL) on the GPU, and the model tests with the
# GPU visible (their `device: auto` resolves to cuda), and the DELIFT benchmark matrix of 200 targets ×
# 2,016 pool records (bench/matrices.py delift-p3-large; copy $OUT/matrices back to benchmark it). Prints one table: influence
# evaluations per second on the GPU against the CPU numbers recorded in BENCHMARKS.md.
#
# Run from the repository root:  bash bench/gpu_check.sh            (needs a CUDA device; exits 1 with a message otherwise)
#                                 bash bench/gpu_check.sh --dry-run  (no GPU needed: every nncift command line below is
#                                                                     parsed by the real argument parser, nothing runs)
# Environment: PYTHON (default .venv/bin/python), OUT (default runs/gpu-check), DATA (default ../shared/data/p3).
# Nothing else in the project needs a GPU; the CPU path is unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
OUT=${OUT:-runs/gpu-check}
DATA=${DATA:-../shared/data/p3}
DRY_RUN=0
[ "${1:-}" = "--dry-run" ] && DRY_RUN=1
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

POOL=("$DATA/ag_news_classify.jsonl" "$DATA/sciq_Direct_Question_Closed_Book_.jsonl" "$DATA/glue_mrpc_paraphrase.jsonl")
TARGETS="$DATA/ag_news_classify_question_first.jsonl"
GPU=(--device cuda --dtype bfloat16)
pool_flags=()
for file in "${POOL[@]}"; do pool_flags+=(--data "$file"); done

declare -a NAMES COMMANDS
add() { NAMES+=("$1"); shift; COMMANDS+=("$(printf '%q ' "$@")"); }
add delift   select "${pool_flags[@]}" --targets "$TARGETS" --influence delift --selection.objective flmi --sampling.fraction 0.1 --selection.budget 0.1 "${GPU[@]}" --out "$OUT/select-delift" --quiet
add less     select "${pool_flags[@]}" --targets "$TARGETS" --influence less --sampling.fraction 0.1 --selection.budget 0.05 "${GPU[@]}" --out "$OUT/select-less" --quiet
add selectit select "${pool_flags[@]}" --influence selectit --sampling.fraction 0.1 --selection.budget 0.2 "${GPU[@]}" --out "$OUT/select-selectit" --quiet
# fine-tuning on TRL's SFTTrainer: bf16 mixed precision, 8 records per step in 4 micro-batches of 2, gradient checkpointing
add finetune finetune --data "$OUT/select-delift/selected.jsonl" --epochs 1 --batch-size 8 --gradient-accumulation 4 \
    --gradient-checkpointing --precision bf16 "${GPU[@]}" --out "$OUT/adapter" --quiet
add evaluate evaluate --data "$TARGETS" --limit 64 --adapter "$OUT/adapter" --max-new-tokens 8 "${GPU[@]}" --out "$OUT/evaluate.json" --quiet
add icl      evaluate --data "$TARGETS" --limit 64 --icl-pool "$OUT/select-delift/selected.jsonl" --k 3 --max-new-tokens 8 "${GPU[@]}" --out "$OUT/icl.json" --quiet

if [ "$DRY_RUN" = 1 ]; then
  for i in "${!NAMES[@]}"; do
    eval "args=(${COMMANDS[$i]})"
    "$PYTHON" - "${args[@]}" <<'EOF'
import sys
from nncift.cli.commands import build_parser
args = build_parser().parse_args(sys.argv[1:])  # exits 2 with argparse's message on a bad flag
print(f"parses: nncift {args.command} ({len(sys.argv) - 1} arguments)")
EOF
  done
  echo "dry run: every command line parses; nothing was run"
  exit 0
fi

if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  echo "gpu_check: no CUDA device visible to torch (torch.cuda.is_available() is False): run this on a machine with an NVIDIA GPU" >&2
  exit 1
fi
for file in "${POOL[@]}" "$TARGETS"; do
  [ -f "$file" ] || { echo "gpu_check: $file not found (set DATA to the folder of the P3 files)" >&2; exit 1; }
done
mkdir -p "$OUT"
"$PYTHON" -c 'import torch; print("device:", torch.cuda.get_device_name(0), "| torch", torch.__version__, "| CUDA", torch.version.cuda)'

declare -A SECONDS_OF
for i in "${!NAMES[@]}"; do
  eval "args=(${COMMANDS[$i]})"
  echo "== ${NAMES[$i]}: nncift ${COMMANDS[$i]}"
  start=$(date +%s.%N)
  "$PYTHON" -m nncift.cli "${args[@]}" > "$OUT/${NAMES[$i]}.log" 2>&1 || { echo "gpu_check: ${NAMES[$i]} failed; see $OUT/${NAMES[$i]}.log" >&2; tail -5 "$OUT/${NAMES[$i]}.log" >&2; exit 1; }
  SECONDS_OF[${NAMES[$i]}]=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN{print b - a}')
done

echo "== the network issue's DELIFT matrix: 200 targets × 2,016 P3 pool records on the GPU (resumable; bench/matrices.py)"
NNCIFT_DEVICE=cuda NNCIFT_BENCH_OUT="$OUT/matrices" "$PYTHON" bench/matrices.py delift-p3-large 2>&1 | tail -1 || echo "gpu_check: the DELIFT matrix failed (see above)" >&2

echo "== model tests with the GPU visible (device auto -> cuda)"
"$PYTHON" -m pytest -q tests/downstream tests/influence 2>&1 | tail -3

"$PYTHON" - "$OUT" "${SECONDS_OF[finetune]}" "${SECONDS_OF[evaluate]}" "${SECONDS_OF[icl]}" <<'EOF' | tee "$OUT/gpu_table.md"
import json, sys
from pathlib import Path

out, finetune_s, evaluate_s, icl_s = Path(sys.argv[1]), *map(float, sys.argv[2:])
# CPU references (2 shared cores, fp32) from BENCHMARKS.md: evaluations per second of each influence function
cpu = {"delift": (0.682, "delift.md: plain batched, pairs/s"), "less": (18000 / 675.4, "less-p3 matrix: entries/s"),
       "selectit": (300 / 3342.6, "selectit.md: records/s")}
print("| step | seconds on GPU | influence evaluations | evaluations/s GPU | evaluations/s CPU (BENCHMARKS.md) | GPU / CPU |")
print("|---|---|---|---|---|---|")
for name in ("delift", "less", "selectit"):
    cost = json.loads((out / f"select-{name}" / "manifest.json").read_text())["cost"]
    stage = next(v for k, v in cost["seconds_by_stage"].items() if k.startswith("influence"))
    rate = cost["influence_evaluations_made"] / max(stage, 1e-9)
    reference, source = cpu[name]
    print(f"| select {name} (bf16) | {cost['seconds_total']:.1f} (influence {stage:.1f}) | {cost['influence_evaluations_made']:,} | "
          f"{rate:.2f} | {reference:.3f} ({source}) | {rate / reference:.1f}× |")
finetune = json.loads((out / "adapter" / "finetune.json").read_text())
tokens = finetune.get("tokens_seen") or 0
label = (f"finetune, TRL SFTTrainer ({len(finetune['losses'])} steps, {finetune.get('precision', '?')}, accumulation "
         f"{finetune['settings'].get('gradient_accumulation', 1)}, checkpointing {finetune['settings'].get('gradient_checkpointing', False)})")
print(f"| {label} | {finetune_s:.1f} (wall, incl. load) | – | {tokens / max(finetune['seconds'], 1e-9):.0f} tokens/s | "
      f"≈ 180 tokens/s (5–6 ms per token per step) | {tokens / max(finetune['seconds'], 1e-9) / 180:.1f}× |")
for label, name, seconds in (("evaluate (adapter)", "evaluate", evaluate_s), ("evaluate --icl-pool (K = 3)", "icl", icl_s)):
    metrics = json.loads((out / f"{name}.json").read_text())["metrics"]
    print(f"| {label} | {seconds:.1f} (wall, incl. load) | – | {metrics['n'] / max(metrics['seconds'], 1e-9):.2f} queries/s | "
          "≈ 1 query/s (ICL, CPU) | – |")
EOF
