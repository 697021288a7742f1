#!/usr/bin/env bash
# One named run that survives the machine: train it and evaluate it with its state inside the
# repository ($RESULTS/runs/NAME: checkpoint, logs, per-sample attack flags, results), committing
# each finished stage, so a fresh clone on any machine continues where the last one stopped. Rerun
# the same command after any interruption: a finished training is resumed (nothing to do), a
# finished attack is read from the committed flags. A small_cnn ensemble's checkpoint is < 1 MB.
#   RESULTS=results/defaults_sweep SUBSET=8192 EPOCHS=8 bash experiments/persistent_run.sh NAME METHOD SEED [KEY=VALUE ...]
# KEY=VALUE pairs are the method's options (edlcm train --set). COMMIT=0 skips the commits.
set -euo pipefail
[ $# -ge 3 ] || { echo "usage: $0 NAME METHOD SEED [KEY=VALUE ...]" >&2; exit 2; }
name=$1 method=$2 seed=$3
shift 3
repo=${REPO:-$(cd "$(dirname "$0")/.." && pwd)}  # REPO: commit into another clone (code pinned elsewhere)
DATA=${DATA:-$repo/../shared/data/cifar10-jpeg}
RESULTS=${RESULTS:?set RESULTS, a folder inside the repository, e.g. results/defaults_sweep}
case $RESULTS in /*) ;; *) RESULTS=$repo/$RESULTS ;; esac  # relative to REPO, from a pinned copy too
ARCH=${ARCH:-small_cnn}
WIDTH=${WIDTH:-1}        # small_cnn's channel multiplier (the capacity study, docs/results.md)
EPOCHS=${EPOCHS:-20}
SUBSET=${SUBSET:-0}      # >0: a fixed random subset of N training images
SAMPLES=${SAMPLES:-500}  # fixed random test images attacked
EPS=${EPS:-0.005,0.01,0.02}
# default,autoattack adds torchattacks' AutoAttack row (an optional dependency; hours per run on a CPU):
# a run evaluated with fewer attacks is evaluated again, and only the new attack runs (the flags cache).
ATTACKS=${ATTACKS:-default}
CURVATURE=${CURVATURE:-200}
COMMIT=${COMMIT:-1}
EDLCM=${EDLCM:-python -m edlcm_ext}  # the trainer/evaluator to run (a pinned copy of the code, say)
run_dir=$RESULTS/runs/$name
mkdir -p "$run_dir/eval"

sets=()
for option in "$@"; do sets+=(--set "$option"); done

commit() {  # MESSAGE [PATH]: commit only PATH (default this run's folder); another git command may hold the index for a moment
  [ "$COMMIT" = 1 ] || return 0
  local path=${2:-$run_dir}
  [ -e "$path" ] || return 0  # nothing written there yet
  for _ in 1 2 3 4 5 6; do
    if git -C "$repo" add -- "$path" && git -C "$repo" commit -q -m "$1" -- "$path"; then return 0; fi
    git -C "$repo" diff --cached --quiet -- "$path" && return 0  # nothing new to record
    sleep 5
  done
  echo "could not commit $path" >&2
  return 1
}

# One epoch per call (--stop-after keeps the --epochs schedule), each finished epoch committed.
done_epochs=$( [ -f "$run_dir/log.jsonl" ] && wc -l < "$run_dir/log.jsonl" || echo 0 )
for ((epoch = done_epochs + 1; epoch <= EPOCHS; epoch++)); do
  echo "== train $name epoch $epoch/$EPOCHS ($(date -u +%H:%M))"
  $EDLCM train --method "$method" --seed "$seed" --dataset imagefolder --data-dir "$DATA" --arch "$ARCH" --width "$WIDTH" --members 3 \
    --epochs "$EPOCHS" --stop-after "$epoch" --train-subset "$SUBSET" --channels-last --no-progress --resume "${sets[@]}" \
    --out-dir "$run_dir"
  commit "Record: $name epoch $epoch/$EPOCHS ($method, seed $seed, ${*:-defaults}; $ARCH x3, subset ${SUBSET}, $(uname -m), $(date -u +%F))"
done

# Evaluated already, with these attacks, and trained no further: nothing to do (a finished run costs
# nothing on a rerun). eval/attacks.txt names the attacks of results.json ("default" if it is missing).
evaluated_with=$(cat "$run_dir/eval/attacks.txt" 2>/dev/null || echo default)
if [ "$done_epochs" -ge "$EPOCHS" ] && [ -f "$run_dir/eval/results.json" ] && [ "$evaluated_with" = "$ATTACKS" ]; then
  exit 0
fi
echo "== evaluate $name ($(date -u +%H:%M))"
# The evaluation caches each (attack, eps) in eval/flags as it finishes (written atomically), and may
# run for hours (AutoAttack on a CPU): commit what is there every FLAG_COMMIT_SECONDS too, so a machine
# that goes away mid-evaluation loses at most the attack it was running.
# (The sleep runs apart and is killed with its loop, so no stray sleep holds the caller's output open.)
(
  trap 'kill "$nap" 2> /dev/null; exit 0' TERM
  while :; do
    sleep "${FLAG_COMMIT_SECONDS:-600}" &
    nap=$!
    wait "$nap"
    commit "Record: $name evaluation in progress (per-sample flags so far; attacks $ATTACKS, $(date -u +%F))" "$run_dir/eval/flags" || true
  done
) &
flag_committer=$!
trap 'kill "$flag_committer" 2> /dev/null || true' EXIT
$EDLCM eval --checkpoint "$run_dir/checkpoint.pt" --name "$name" --data-dir "$DATA" --attacks "$ATTACKS" --eps "$EPS" \
  --max-samples "$SAMPLES" --curvature "$CURVATURE" --out-dir "$run_dir/eval" --cache-dir "$run_dir/eval/flags" --no-progress \
  > "$run_dir/eval/stdout.txt" 2>&1 || { cat "$run_dir/eval/stdout.txt" >&2; exit 1; }
kill "$flag_committer" 2> /dev/null || true
echo "$ATTACKS" > "$run_dir/eval/attacks.txt"
commit "Record: $name evaluated (worst case over attacks $ATTACKS on $SAMPLES test images at eps $EPS, $(date -u +%F))"
