#!/usr/bin/env bash
# The one command to run when a GPU is lent (one device call; stops itself after GPU_CHECK_SECONDS,
# default 540, so that a lease of 15 minutes leaves room for its start and the transfers):
#   bash bench/gpu_check.sh            # results under $OUT (the device tool's folder) or bench/results/
# A 15-minute lease does not hold this and experiments/gpu_paper_setting.sh at their default budgets.
# What held both on 2026-12-04 (H200; start about 40 s): one call, timeout_s 595, carry [".data"]:
#   OUT=/tmp/g GPU_CHECK_SECONDS=330 bash bench/gpu_check.sh; OUT=/tmp/p SKIP_BUILD=1 BUDGET=250 \
#   bash experiments/gpu_paper_setting.sh; tar czf $OUT/g.tgz -C /tmp g; tar czf $OUT/p.tgz -C /tmp p
# (two tarballs: $OUT brings back 8 files at most), leaving 5 device minutes for a second warm call.
# In order of what only a GPU can show, each step time-boxed:
# 1. builds the extension in place against the machine's own torch (editable: no isolation, no
#    dependency installs; with a GPU visible torch builds for that GPU's architecture only);
# 2. runs the CUDA tests (every test parametrized on "cuda", and the CUDA-only ones);
# 3. times bench/step.py on 3x ResNet-18 with CIFAR-100 shapes and 3x small_cnn, B=64: plain,
#    reference, fused, every4, every8, every16, every16_bounded (the default), first_order and the
#    other methods; contiguous and channels_last; fp32 and bf16 autocast; peak memory; recorded with
#    machine, torch, commit, date (ResNet-18 alone took 115 s on an H200);
# 4. times the compiled path (bench/step.py --compiled) on 3x ResNet-18, B=64: plain, the default and
#    exact EDLCM, each compiled (Inductor) and graphed (Inductor + CUDA graphs), beside the eager ones;
#    compile time apart and amortized over a 50k-image epoch. On the H200 (2026-12-04) fifteen modes
#    over three configurations printed no row within 240 s: compilation dominates, so fewer modes;
# 5. runs `edlcm demo` (trainer and attacks end to end on the GPU);
# 6. runs the whole suite with what time is left (tests needing torchattacks, absent on the device
#    image, skip with a reason); both test steps use 8 xdist workers where pytest-xdist is installed.
# Targets to read the records against (docs/compiled.md): the best exact EDLCM step <= 2x the eager
# plain_cl step and <= 4x the best plain step, >= 3x faster than the reference; every4 <= 1.3x eager
# plain_cl; peak memory <= 3x plain; a 50k-image epoch of exact EDLCM <= 40 s.
set -uo pipefail
cd "$(dirname "$0")/.."
DEST=${OUT:-bench/results}
BUDGET=${GPU_CHECK_SECONDS:-540}
mkdir -p "$DEST"
export PYTHONUNBUFFERED=1 MAX_JOBS=${MAX_JOBS:-$(nproc)}
status=0
seconds_left() { echo $((BUDGET - SECONDS)); }
# timeout for a step: its own cap, or what is left of the budget when that is less (at least 1 s:
# timeout reads a negative number as an option, and a step past the budget then fails at once)
step_limit() { local left; left=$(seconds_left); left=$((left > 1 ? left : 1)); echo $(($1 < left ? $1 : left)); }

# $OUT brings back at most 8 files: the machine heads build.log, and each record comes back as its JSON.
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$DEST/build.log"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$DEST/build.log"

echo "== build"
timeout "$(step_limit 220)" python3 -m pip install --no-build-isolation --no-deps -q -e . >> "$DEST/build.log" 2>&1 \
  || { echo "build failed, see build.log"; tail -30 "$DEST/build.log"; exit 1; }
echo "built in ${SECONDS} s"
# How the module met libstdc++ (it must list the shared libstdc++ and define few std:: symbols; a private copy
# crashed the CUDA tests: bench/results/gpu_check_2026-12-04_h200.md, third lease):
# Python's link command, whether the module needs the shared libstdc++ and how many std:: symbols it defines itself.
{
  python3 -c "import sysconfig; print('LDSHARED', sysconfig.get_config_var('LDSHARED'))"
  ldd edlcm_ext/_C*.so | grep -E "stdc|gcc_s" || echo "ldd: no shared libstdc++"
  echo "std:: symbols the module defines: $(nm -D --defined-only edlcm_ext/_C*.so | grep -c ' _ZNS')"
} 2>&1 | tee -a "$DEST/build.log"

# Under xdist a test that crashes its process takes one worker, which is replaced, not the whole run.
workers=()
python3 -c "import xdist" 2>/dev/null && workers=(-n 8)

echo "== CUDA tests"
timeout "$(step_limit 120)" python3 -m pytest -q -p no:cacheprovider "${workers[@]}" -k cuda > "$DEST/pytest_cuda.log" 2>&1 || status=1
tail -12 "$DEST/pytest_cuda.log"

echo "== bench ($(seconds_left) s left)"
timeout "$(step_limit 200)" python3 bench/step.py --configs resnet18,small_cnn --amp --methods --repeats 10 \
  --record > "$DEST/step.log" 2>&1 || status=1
cat "$DEST/step.log"
record=$(sed -n 's/^recorded //p' "$DEST/step.log")
[ -n "$record" ] && cp "$record.json" "$DEST/"

echo "== compiled bench ($(seconds_left) s left)"
# every16_bounded: the default (every=16, max_pull=1), eager; every16 (lazy, without the bound) and the
# exact step compiled and graphed.
compiled_modes=plain_cl,every16_bounded_cl,plain_compiled_cl,every16_compiled_cl,compiled_cl
compiled_modes+=,plain_graphed_cl,every16_graphed_cl,graphed_cl
timeout "$(step_limit 240)" python3 bench/step.py --configs resnet18 --modes "$compiled_modes" \
  --repeats 10 --no-memory --record > "$DEST/step_compiled.log" 2>&1 || status=1
cat "$DEST/step_compiled.log"
record=$(sed -n 's/^recorded //p' "$DEST/step_compiled.log")
[ -n "$record" ] && cp "$record.json" "$DEST/"

echo "== demo ($(seconds_left) s left)"
timeout "$(step_limit 90)" python3 -m edlcm_ext demo --no-progress --out-dir /tmp/demo > "$DEST/demo.log" 2>&1 || status=1
tail -15 "$DEST/demo.log"

left=$(($(seconds_left) - 5))
if [ "$left" -gt 30 ]; then
  echo "== whole suite (${left} s)"
  timeout "$left" python3 -m pytest -q -p no:cacheprovider "${workers[@]}" > "$DEST/pytest_all.log" 2>&1 || status=1
  tail -25 "$DEST/pytest_all.log"
fi
exit $status
