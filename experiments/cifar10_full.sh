#!/usr/bin/env bash
# The full comparison (evidence issue): 3x small_cnn on all 50,000 CIFAR-10 (JPEG) training images,
# 20 epochs, channels_last, seed 0, every method at its paper's defaults and EDLCM at
# HvpCurvatureLoss's defaults (docs/defaults.md); evaluated on a fixed 1,000 of the 10,000 test images
# at eps 0.005, 0.01, 0.02 (FGSM, BIM, PGD-10, APGD-CE and APGD-DLR, Square on what they left; the
# per-sample worst case is the headline) with curvature diagnostics, clean accuracy on all 10,000.
# Each run keeps its checkpoint, logs and attack flags in results/cifar10_full/runs/<name> and
# commits every finished epoch and evaluation (experiments/persistent_run.sh): stop it anywhere, rerun
# it on any machine, and it continues. Runs go in priority order. On 2 CPU cores an EDLCM run takes
# ~1 h 45 min of training and ~30 min of evaluation, a Base run ~30 + 30 min: ~20 h in all.
#   nohup bash experiments/cifar10_full.sh > cifar10_full.log 2>&1 &
#   python experiments/summarize_runs.py results/cifar10_full > results/cifar10_full/table.md
set -euo pipefail
cd "$(dirname "$0")/.."
export RESULTS=${RESULTS:-results/cifar10_full} SUBSET=0 EPOCHS=${EPOCHS:-20} SAMPLES=${SAMPLES:-1000}
export EPS=${EPS:-0.005,0.01,0.02}
RUNS=(
  "base base 0"
  "edlcm edlcm 0"
  "edlcm_every4 edlcm 0 every=4"
  "adp adp 0"
  "gal gal 0"
  "deg deg 0"
  "pdd pdd 0"
  "edlcm_lr edlcm_lr 0"
  "edlcm_lg edlcm_lg 0"
  "edlcm_paper_literal edlcm 0 reduction='mean' h=0.1 max_ratio=None"
  "base_seed1 base 1"
  "edlcm_seed1 edlcm 1"
)
for run in "${RUNS[@]}"; do
  read -r -a fields <<< "$run"
  bash experiments/persistent_run.sh "${fields[@]}"
done
