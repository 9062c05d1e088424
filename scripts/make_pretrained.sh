#!/usr/bin/env bash
# Reproduces the shipped pretrained weights (convzoo/pretrained/): trains LeNet-5 on MNIST and
# Fashion-MNIST with the committed presets, deterministically on one CPU thread, then packs each
# checkpoint as safetensors and records its sha256 and its test accuracy (measured by `convzoo eval`'s
# path). No CIFAR-10 weights ship (airbench's are 7.5 MiB): see the README.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export CONVZOO_DATA=${CONVZOO_DATA:-$(cd .. && pwd)/shared/data}
# Arguments pick data sets (mnist, fashion-mnist); none: both.
wanted=${*:-mnist fashion-mnist}
for entry in "mnist:lenet5-mnist:lenet5:last" "fashion-mnist:lenet5-fashion:lenet5:last"; do
  IFS=: read -r dataset preset model ckpt <<<"$entry"
  [[ " $wanted " == *" $dataset "* ]] || continue
  $PY -m convzoo train --config "$preset" --output-dir "runs/pretrained-$dataset" --exist-ok --deterministic \
      --threads 1 --seed 0 --print-freq 0
  $PY scripts/pack_pretrained.py "runs/pretrained-$dataset/$ckpt.pt" "$model:$dataset" \
      "scripts/make_pretrained.sh: --config $preset --deterministic --seed 0, $ckpt.pt"
done
