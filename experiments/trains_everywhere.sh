#!/usr/bin/env bash
# Do the defaults train every architecture we ship, and torchvision's resnet18/resnet34 at their own
# init? 200 steps at lr 0.02, B = 64, momentum 0.9 on CIFAR-10 (JPEG), Base and EDLCM at
# HvpCurvatureLoss's defaults (experiments/paper_defaults.py), one record per architecture in
# results/trains_everywhere/, each committed when written; architectures already recorded are
# skipped, so a rerun on any machine continues. Cheapest first: on 2 CPU cores small_cnn and resnet20
# take minutes, the torchvision ResNets ~0.5-1 h each (they downsample 32x32 inputs early), vgg16_bn
# and our resnet18 ~2 h each, resnet34 ~5 h. REPO: record and commit into another clone (the code pinned
# in this one, so editing the other does not change a run halfway). SUFFIX names a repeat at other
# defaults (SUFFIX=_every16: results/trains_everywhere/<arch>_every16.md, the lazy default's check).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=${REPO:-$PWD}
DATA=${DATA:-$repo/../shared/data/cifar10-jpeg}
STEPS=${STEPS:-200}
OUT=$repo/results/trains_everywhere
mkdir -p "$OUT"
for arch in ${ARCHS:-small_cnn resnet20 torchvision_resnet18 torchvision_resnet34 vgg16_bn resnet18 resnet34}; do
  record=$OUT/$arch${SUFFIX:-}.md
  [ -f "$record" ] && continue
  echo "== $arch ($(date -u +%H:%M))"
  python experiments/paper_defaults.py --data-dir "$DATA" --steps "$STEPS" --settings base,default --arch "$arch" \
    --out "$record.partial" && mv "$record.partial" "$record"
  [ "${COMMIT:-1}" = 1 ] || continue
  for _ in 1 2 3 4 5 6; do  # another run's commit may hold the index for a moment
    git -C "$repo" add -- "$record" &&
      git -C "$repo" commit -q -m "Record: $arch, $STEPS steps at the defaults vs Base ($(date -u +%F))" -- "$record" && break
    sleep 5
  done
done
