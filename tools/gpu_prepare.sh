#!/usr/bin/env bash
# Prepares, on a machine with PyPI and ../shared/mnist, what tools/gpu_measure.sh
# needs on the device machine (which reaches no registry): mnist_flax's pure-Python
# dependencies that its image may lack, as wheels, and the MNIST files with
# QMNIST's writer file (for validation_split=writers), in .gpu/ (ignored by git,
# carried by the device tool).
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
mkdir -p .gpu/whl .gpu/mnist
python3 -m pip download -q --no-deps --only-binary=:all: -d .gpu/whl \
  ml-collections tensorboardX tqdm absl-py
cp "${MNIST_DIR:-../shared/mnist}"/*.gz .gpu/mnist/
cp ../shared/qmnist/qmnist-train-labels-idx2-int.gz .gpu/mnist/
du -sh .gpu
