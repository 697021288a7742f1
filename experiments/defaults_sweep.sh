#!/usr/bin/env bash
# The sweep that chose HvpCurvatureLoss's defaults (docs/defaults.md): 3x small_cnn on a fixed 8,192 of
# the CIFAR-10 (JPEG) training images, 8 epochs, evaluated on a fixed 500 test images with the
# six attacks (worst case per sample). The default (alpha 1, h 0.1, "per_sample", max_ratio 1) and
# Base at two seeds first, then alpha and h x3 and x0.3 around the default, the gentler ones first
# (h 0.3 was the first candidate default: it bought more robustness for more clean accuracy than
# allowed; the default's seed 1 lost more clean accuracy to its Base than allowed), the second seeds
# of alpha 0.3 and h 0.03 (both met the criterion on seed 0) and a third seed of Base and the default (Base's clean
# accuracy moved 4.3 points between seeds 0 and 1, and 5.9 in seed 1's last epoch), then the
# paper-literal reading. The cap's value needs no neighbours: the logs show whether it ever engaged.
# Before that reading: the default with alpha ramped in over the first 100 steps (alpha_warmup=100),
# a candidate fix for torchvision resnet34's failure to train (docs/defaults.md): it cost nothing
# here, but it did not fix resnet34, so it has one seed (alpha_warmup left HvpCurvatureLoss in 0.4: the
# run, warmup100, stays in results/defaults_sweep/runs/ as a record and is no longer in this list). Last, seeds 3 and 4 of Base and the default:
# not to revisit the verdict (docs/defaults.md fixed before seed 2 how the seeds decide, and seeds 1
# and 2 already failed it), but to measure how far Base's clean accuracy spreads between seeds at this
# budget, against which the criterion's 2 points are read, and the default's mean cost with it.
# Before those, the bound on the regularizer's pull at 0.3 of the CE's (max_pull=0.3, no value cap):
# the candidate safeguard for torchvision resnet34 (docs/defaults.md). Planned for seeds 0-2; it failed
# resnet34's check and barely engages on small_cnn in training, so it has seed 0 only. The bound at 0.1
# passed resnet34's check on means over four inits and trains at the full budget (docs/defaults.md):
# seeds 0-2 here give its reading of the issue's criterion at this budget.
# Every run's state lives in results/defaults_sweep/runs/<name> and is committed as it finishes
# (experiments/persistent_run.sh), so rerunning this script on any machine continues the sweep. About
# 17 min per EDLCM run on 2 CPU cores (7 training, 10 evaluation), 12 min per Base run; then:
#   python experiments/summarize_runs.py results/defaults_sweep
# Every EDLCM run here regularizes every step (every=1, the paper's exact step, the default until 0.4).
set -euo pipefail
cd "$(dirname "$0")/.."
# eps 0.01 is the sweep's criterion; 0.005 would double the evaluation (Square's 5000 queries on the
# third of the images still robust there), so only base_s0 has it.
export RESULTS=${RESULTS:-results/defaults_sweep} SUBSET=${SUBSET:-8192} EPOCHS=${EPOCHS:-8} SAMPLES=${SAMPLES:-500} EPS=${EPS:-0.01,0.02}
RUNS=(
  "base_s0 base 0"
  "default_s0 edlcm 0 every=1"
  "base_s1 base 1"
  "default_s1 edlcm 1 every=1"
  "h0.3 edlcm 0 h=0.3 every=1"
  "alpha0.3 edlcm 0 alpha=0.3 every=1"
  "h0.03 edlcm 0 h=0.03 every=1"
  "alpha0.3_s1 edlcm 1 alpha=0.3 every=1"
  "h0.03_s1 edlcm 1 h=0.03 every=1"
  "base_s2 base 2"
  "default_s2 edlcm 2 every=1"
  "alpha3 edlcm 0 alpha=3.0 every=1"
  "paper_literal edlcm 0 reduction='mean' max_ratio=None every=1"
  "pull0.3 edlcm 0 max_pull=0.3 max_ratio=None every=1"
  "pull0.1_s0 edlcm 0 max_pull=0.1 max_ratio=None every=1"
  "pull0.1_s1 edlcm 1 max_pull=0.1 max_ratio=None every=1"
  "pull0.1_s2 edlcm 2 max_pull=0.1 max_ratio=None every=1"
  "base_s3 base 3"
  "default_s3 edlcm 3 every=1"
  "base_s4 base 4"
  "default_s4 edlcm 4 every=1"
)
for run in "${RUNS[@]}"; do
  read -r -a fields <<< "$run"
  bash experiments/persistent_run.sh "${fields[@]}"
done
