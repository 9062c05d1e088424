#!/usr/bin/env bash
# What the test suite needs from Debian, not PyPI: Fashion-MNIST (dataset-fashion-mnist) and a
# Chromium for the browser test. Installed with apt-get when missing and we are root; otherwise
# one line with the exact command, and a non-zero exit so pytest never starts half-equipped.
set -euo pipefail
need=()
[ -f /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz ] || need+=(dataset-fashion-mnist)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian packages the tests need: ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq "${need[@]}" >/dev/null
  exit 0
fi
echo "convzoo: error: the tests need Debian packages ${need[*]}; run: sudo apt-get install -y ${need[*]}" >&2
exit 2
