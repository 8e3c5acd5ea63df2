#!/usr/bin/env bash
# Rebuild BENCHMARKS.md from the latest result of each benchmark (bench/results/*.md).
set -euo pipefail
cd "$(dirname "$0")/.."
order=(network_issue designs_rules_delift_p3_large designs_shrink_delift_p3_large designs_shrink_delift_demo designs_blockfolds_delift_demo designs_blockfolds_delift_p3_large designs_rect_delift_p3_large designs_floor_less_p3_2k designs_floor_text_less_p3_2k designs_floor1_less_p3_2k designs_floor_less_p3 grid_less_p3_2k designs_pairs_delift_p3_large designs_pairs360_delift_p3_large designs_pairs_delift_demo designs_nested_rules_less_p3_2k designs_nested_rules_less_p3 designs_nested_rules_delift_demo designs_taskcal_on_delift_p3_large designs_taskcal_off_delift_p3_large designs_taskcal_less_p3_2k designs_taskcal_off_less_p3_2k designs_taskcal_every_less_p3_2k designs_taskcal_less_p3 designs_taskcal_off_less_p3 designs_taskcal_every_less_p3 designs_oof_less_p3_2k designs_before_oof_less_p3_2k designs_oof_rules_less_p3_2k designs_oof_less_p3 designs_oof_rules_less_p3 designs_oof_delift_demo designs_before_oof_delift_demo designs_oof_rules_delift_demo designs_oof_delift_p3_large noise_labels response_weight_less response_weight_delift designs_weight_less_p3_2k designs_weight_less_p3 designs_weight_delift_p3_large designs_weight_delift_demo designs_mpnet_less_p3_2k designs_mpnet_less_p3 designs_input_less_p3_2k designs_input_less_p3 designs_input_delift_demo designs_input_delift_p3_large row_ceiling designs_stratified_less_p3_2k designs_stratified_less_p3_2k_seeds345 designs_unstratified_less_p3_2k_seeds345 designs_rowcal_less_p3_2k designs_rules_less_p3_2k designs_less_p3_2k designs_less_p3_2k_lm designs_delift_se_p3_5k designs_delift_demo designs_rules_delift_demo designs_repeats_delift_demo network_summary prediction training_sample selection sparse sparse_p3 sparse_no_self greedi million recall_million recall select_million embeddings scoring network_delift_se_alpaca network_less_p3 network_delift_p3 network_delift_demo network_delift_se_p3 network_sizes grid_delift_se_p3mix grid_less_p3 delift delift_cost compressors less less_readme selectit experiment_targeted experiment_general finetune_trl judge ray gpu)
{
  echo "# Benchmarks"
  echo
  echo "The latest result of each benchmark in \`bench/\`, with the command that produced it. Every table"
  echo "compares against a baseline measured in the same run (ratios). Machine: 2 CPU cores, 24 GiB, no GPU;"
  echo "unless a table says otherwise, the cores were shared with other jobs while it ran (see each table's"
  echo "load notes), which lowers absolute speeds but not the ratios taken within one run."
  echo "Regenerate this file with \`bash bench/collect.sh\` after re-running a benchmark."
  for name in "${order[@]}"; do
    file="bench/results/$name.md"
    [ -f "$file" ] || continue
    echo; echo "---"; echo
    sed -e 's/^# /## /' -e 's#](\([A-Za-z0-9_.-]*\.png\))#](bench/results/\1)#g' "$file"  # figures: relative to the root
  done
} > BENCHMARKS.md
echo "BENCHMARKS.md: $(grep -c '^## ' BENCHMARKS.md) sections"
