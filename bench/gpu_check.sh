#!/usr/bin/env bash
# The one command to run the first time a GPU is lent (one device call, under 9 minutes on an H100):
#   bash bench/gpu_check.sh            # results under $OUT (the device tool's folder) or bench/results/
# 1. builds the extension in place against the machine's own torch (editable: no isolation, no
#    dependency installs), so the tests and the bench import this checkout with its kernels;
# 2. runs the whole test suite there (the CUDA variants run; tests needing torchattacks, absent on
#    the device image, skip with a reason);
# 3. times bench/step.py on 3x ResNet-18 with CIFAR-100 shapes, B=64: plain, reference, fused, every4,
#    fraction25, first_order; contiguous and channels_last; fp32 and bf16 autocast; peak memory;
#    recorded with the machine, torch version, commit and date.
# Targets to read the record against (issue "Cheap EDLCM"): exact <= 4x the best plain step, >= 3x
# faster than the reference, peak memory <= 3x plain; every4 <= 1.5x the best plain step.
set -uo pipefail
cd "$(dirname "$0")/.."
DEST=${OUT:-bench/results}
mkdir -p "$DEST"
status=0
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$DEST/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$DEST/gpu.txt"
echo "== build" && timeout 240 python3 -m pip install --no-build-isolation --no-deps -q -e . > "$DEST/build.log" 2>&1 \
  || { echo "build failed, see build.log"; tail -30 "$DEST/build.log"; exit 1; }
echo "== tests" && timeout 200 python3 -m pytest -q -p no:cacheprovider --junitxml="$DEST/pytest.xml" \
  > "$DEST/pytest.log" 2>&1 || status=1
tail -15 "$DEST/pytest.log"
echo "== bench" && timeout 200 python3 bench/step.py --configs resnet18 --amp --repeats 10 \
  --json "$DEST/step_cuda_resnet18.json" --record 2>&1 | tee "$DEST/step.log" || status=1
cp bench/results/step_*cuda* "$DEST/" 2>/dev/null || true
exit $status
