#!/usr/bin/env bash
# Runs an experiment script (experiments/cifar10_full.sh, experiments/capacity.sh, ...) from a copy of
# the code pinned at COMMIT, a git worktree under $LANES (default: beside this checkout), while the
# records it commits land in this checkout: editing or refactoring here never changes a run in flight.
# The worktree is reused if it exists. One lane per CPU core, one thread each:
#   OMP_NUM_THREADS=1 RUNS="at_pgd4 trs" nohup bash experiments/pinned_lane.sh HEAD experiments/cifar10_full.sh > lane1.log 2>&1 &
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: $0 COMMIT SCRIPT   (e.g. HEAD experiments/cifar10_full.sh)" >&2; exit 2; }
# The experiments run `python -m edlcm_ext`: without torch every run of the lane fails at once.
python -c "import torch" 2> /dev/null || {
  echo "$0: '$(command -v python || echo python)' cannot import torch; activate the environment README's first command made (. .venv/bin/activate)" >&2
  exit 2
}
repo=$(cd "$(dirname "$0")/.." && pwd)
commit=$(git -C "$repo" rev-parse --short "$1^{commit}")
code=${LANES:-$repo/../lanes}/$commit
[ -d "$code" ] || git -C "$repo" worktree add --detach "$code" "$commit"
# The compiled kernels: this checkout's build if their sources at COMMIT are the ones it was built
# from, else a build in the worktree.
if [ -f "$code/setup.py" ] && ! compgen -G "$code/edlcm_ext/_C*.so" > /dev/null; then
  if git -C "$repo" diff --quiet "$commit" -- csrc setup.py && compgen -G "$repo/edlcm_ext/_C*.so" > /dev/null; then
    cp "$repo"/edlcm_ext/_C*.so "$code/edlcm_ext/"
  else
    (cd "$code" && python setup.py -q build_ext --inplace)
  fi
fi
echo "== $2 pinned at $commit ($code), records into $repo ($(date -u +%F' '%H:%M))"
cd "$code"  # python -m edlcm_ext imports the pinned package from here
REPO=$repo exec bash "$2"
