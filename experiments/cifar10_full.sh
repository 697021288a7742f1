#!/usr/bin/env bash
# The full comparison (evidence issue): 3x small_cnn on all 50,000 CIFAR-10 (JPEG) training images,
# 20 epochs, channels_last, seed 0, every method at its paper's defaults and EDLCM at
# HvpCurvatureLoss's defaults (docs/defaults.md); evaluated on a fixed 1,000 of the 10,000 test images
# at eps 0.005, 0.01, 0.02 (FGSM, BIM, PGD-10, APGD-CE and APGD-DLR, Square on what they left; the
# per-sample worst case is the headline) with curvature diagnostics, clean accuracy on all 10,000.
# Each run keeps its checkpoint, logs and attack flags in results/cifar10_full/runs/<name> and
# commits every finished epoch and evaluation (experiments/persistent_run.sh): stop it anywhere, rerun
# it on any machine, and it continues. Runs go in priority order. On 2 CPU cores (one thread, beside
# one or two other jobs) an EDLCM run took 1.5-3 h of training and 30-45 min of evaluation, a Base
# run under an hour + 30 min: about a day in all (docs/results.md; its table's min/epoch column has
# each run's measure).
#   nohup bash experiments/cifar10_full.sh > cifar10_full.log 2>&1 &
#   ATTACKS=default,autoattack bash experiments/cifar10_full.sh   # then torchattacks' AutoAttack row too
#   RUNS="edlcm base" bash experiments/cifar10_full.sh            # only the named runs, in the order named
# The AutoAttack rows the comparison reports (the field's question, docs/results.md), once each run is trained:
#   RUNS="at_fast edlcm_every8 at_pgd4 edlcm_every4 trs edlcm base edlcm_every16 adp gal deg pdd" ATTACKS=default,autoattack bash experiments/cifar10_full.sh
#   (in pairs of equal step cost, as docs/results.md compares them)
#   python experiments/evidence_report.py   # tables, figure and docs/results.md from the committed runs
set -euo pipefail
cd "$(dirname "$0")/.."
export RESULTS=${RESULTS:-results/cifar10_full} SUBSET=0 EPOCHS=${EPOCHS:-20} SAMPLES=${SAMPLES:-1000}
export EPS=${EPS:-0.005,0.01,0.02}
# One run per line of cifar10_full.runs (comments skipped), in its order; with RUNS, the runs it names
# in its order (a name with no line is an error, not a silent skip).
mapfile -t runs < <(grep -v '^#' experiments/cifar10_full.runs)
if [ -n "${RUNS:-}" ]; then
  declare -A line_of
  for run in "${runs[@]}"; do line_of[${run%% *}]=$run; done
  runs=()
  for name in $RUNS; do
    [ -n "${line_of[$name]:-}" ] || { echo "RUNS: no run named $name in experiments/cifar10_full.runs" >&2; exit 2; }
    runs+=("${line_of[$name]}")
  done
fi
for run in "${runs[@]}"; do
  read -r -a fields <<< "$run"
  bash experiments/persistent_run.sh "${fields[@]}"
done
