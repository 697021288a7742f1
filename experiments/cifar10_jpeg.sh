#!/usr/bin/env bash
# The comparison behind docs/results.md, at a budget that fits 2 CPU cores: every method trains
# 3 small CNNs with the same seed, data subset and epochs on CIFAR-10 (JPEG re-encoded), then all
# are evaluated together (white-box suite, black-box transfer from a VGG-16-BN surrogate and from an
# independently trained Base ensemble of the same architecture, TSR).
# Resumable: rerun after an interruption and finished work is skipped (checkpoints, flag cache).
#   bash experiments/cifar10_jpeg.sh            # DATA, OUT, RESULTS, SUBSET, EPOCHS, SAMPLES override
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data/cifar10-jpeg}
OUT=${OUT:-runs/cifar10_jpeg}
RESULTS=${RESULTS:-results/cifar10_jpeg}
SUBSET=${SUBSET:-8192}
EPOCHS=${EPOCHS:-8}
SAMPLES=${SAMPLES:-500}
METHODS=(base deg adp gal pdd edlcm edlcm_lr edlcm_lg)
COMMON=(--dataset imagefolder --data-dir "$DATA" --arch small_cnn --members 3 --epochs "$EPOCHS"
        --train-subset "$SUBSET" --seed 0 --no-progress --resume)

for method in "${METHODS[@]}"; do
  echo "== train $method"
  edlcm train --method "$method" "${COMMON[@]}" --out-dir "$OUT/$method"
done
echo "== train black-box surrogates"
# VGG-16-BN diverges in its first epochs at the ensembles' lr 0.02 (loss above chance), so it trains at 0.005.
edlcm train --method base "${COMMON[@]}" --arch vgg16_bn --members 1 --epochs 12 --lr 0.005 --out-dir "$OUT/surrogate_vgg16_bn"
edlcm train --method base "${COMMON[@]}" --seed 1 --out-dir "$OUT/surrogate_small_cnn"
SURROGATES=(surrogate_vgg16_bn surrogate_small_cnn)

checkpoints=()
for method in "${METHODS[@]}"; do checkpoints+=(--checkpoint "$OUT/$method/checkpoint.pt"); done
echo "== evaluate"
edlcm eval "${checkpoints[@]}" --attacks fgsm,bim,pgd,apgd --eps 0.005,0.01 --tsr-eps 0.01,0.02 \
  --surrogate "$OUT/surrogate_vgg16_bn/checkpoint.pt" --surrogate "$OUT/surrogate_small_cnn/checkpoint.pt" --max-samples "$SAMPLES" --apgd-iterations 50 \
  --out-dir "$RESULTS" --cache-dir "$OUT/eval_flags" --no-progress
mkdir -p "$RESULTS/training"
for method in "${METHODS[@]}" "${SURROGATES[@]}"; do cp "$OUT/$method/log.jsonl" "$RESULTS/training/$method.jsonl"; done
python experiments/summarize_training.py "$OUT" "${METHODS[@]}" "${SURROGATES[@]}" > "$RESULTS/training.md"
