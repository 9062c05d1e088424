#!/usr/bin/env bash
# Reproduces the shipped pretrained weights (convzoo/pretrained/): trains LeNet-5 on MNIST and
# Fashion-MNIST with the committed presets, deterministically on one CPU thread, then packs each
# best.pt as safetensors and records its sha256 and its test accuracy (measured by `convzoo eval`'s path).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export CONVZOO_DATA=${CONVZOO_DATA:-$(cd .. && pwd)/shared/data}
# Arguments pick data sets (mnist, fashion-mnist); none: both.
wanted=${*:-mnist fashion-mnist}
for pair in "mnist:lenet5-mnist" "fashion-mnist:lenet5-fashion"; do
  dataset=${pair%%:*}; preset=${pair#*:}
  [[ " $wanted " == *" $dataset "* ]] || continue
  $PY -m convzoo train --config "$preset" --output-dir "runs/pretrained-$dataset" --exist-ok --deterministic \
      --threads 1 --seed 0 --print-freq 0
  $PY scripts/pack_pretrained.py "runs/pretrained-$dataset/last.pt" "lenet5:$dataset" \
      "scripts/make_pretrained.sh: --config $preset --deterministic --threads 1 --seed 0, last.pt"
done
