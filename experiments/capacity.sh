#!/usr/bin/env bash
# The capacity study (docs/results.md, "What EDLCM costs in clean accuracy, and why"): does EDLCM's
# clean cost shrink as the members grow? Base and EDLCM (HvpCurvatureLoss's defaults) at small_cnn
# widths 1, 2 and 4 (24k, 95k, 374k parameters per member), 3 members, all 50,000 CIFAR-10 (JPEG)
# training images, 10 epochs, channels_last; clean accuracy on all 10,000 test images, the per-sample
# worst case at eps 0.01 on a fixed 500. Each run keeps its state in results/capacity/runs/<name>
# and commits every finished epoch and evaluation (experiments/persistent_run.sh): rerun to continue.
# On 2 CPU cores (one thread each) width 4 takes about 20 min per Base epoch: the study is about 11 h
# of training in all, widths 1 and 2 within the first 4.
#   nohup bash experiments/capacity.sh > capacity.log 2>&1 &
#   python experiments/clean_price_report.py   # the table and the rule's verdict on docs/results.md
set -euo pipefail
cd "$(dirname "$0")/.."
export RESULTS=${RESULTS:-results/capacity} SUBSET=0 EPOCHS=${EPOCHS:-10} SAMPLES=${SAMPLES:-500} EPS=${EPS:-0.01}
mapfile -t runs < <(grep -v '^#' experiments/capacity.runs)
for run in "${runs[@]}"; do
  read -r -a fields <<< "$run"
  WIDTH=${fields[1]} bash experiments/persistent_run.sh "${fields[0]}" "${fields[@]:2}"
done
