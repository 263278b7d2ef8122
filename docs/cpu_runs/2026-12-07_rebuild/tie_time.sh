#!/usr/bin/env bash
# usage: tie_time.sh ARM...   the rebuild screen's tie rule, as amended 2026-12-07 (docs/research.md):
# each arm's own command for 2 epochs, one process at a time on core 0, the screen's runs paused, two rounds in
# alternating order; prints each arm's second-epoch times.
set -e
cd /work/frozen_rebuild
writers="--config.validation_examples=10000 --config.validation_split=writers --config.writers_file=/work/shared/qmnist/qmnist-train-labels-idx2-int.gz --config.data_dir=/work/shared/mnist --config.progress_bar=False"
a_aug="--config.augment.jitter=torchvision --config.augment.brightness=0.4 --config.augment.contrast=0.4 --config.augment.degrees=5 --config.augment.translate=0 --config.augment.interpolation=nearest --config.augment.fill=0.171"
cfg() { case $1 in
  unpadded) echo "--config=configs/champion.py --config.model=v36:8-12-14-18-16";;
  v36pad) echo "--config=configs/champion.py --config.model=v36pad";;
  model3) echo "--config=configs/model3.py";;
  eva6) echo "--config=configs/anchor_eva6.py";;
  unpadded_a_augment) echo "--config=configs/champion.py --config.model=v36:8-12-14-18-16 $a_aug";;
  unpadded_b_recipe) echo "--config=configs/anchor_woolly.py --config.model=v36:8-12-14-18-16";;
  tiny_unpadded) echo "--config=configs/tiny.py --config.model=v36:6-8-10-12-12";;
  tiny_v36pad) echo "--config=configs/tiny.py --config.model=v36pad_tiny";;
  woolly) echo "--config=configs/anchor_woolly.py";;
  tiny_b_recipe) echo "--config=configs/anchor_woolly.py --config.model=v36:6-8-10-12-12";;
  tiny_a_augment) echo "--config=configs/tiny.py --config.model=v36:6-8-10-12-12 $a_aug";;
  *) echo "unknown arm $1" >&2; exit 2;; esac; }
pids=$(pgrep -f "mnist_flax.main" || true)
[ -n "$pids" ] && kill -STOP $pids
trap '[ -n "$pids" ] && kill -CONT $pids' EXIT
arms=("$@"); rev=(); for ((i=${#arms[@]}-1; i>=0; i--)); do rev+=("${arms[i]}"); done
for round in 1 2; do
  if [ $round = 1 ]; then order=("${arms[@]}"); else order=("${rev[@]}"); fi
  for arm in "${order[@]}"; do
    w=$(mktemp -d)
    OMP_NUM_THREADS=1 taskset -c 0 /work/main/.venv/bin/python -m mnist_flax.main $(cfg $arm) $writers \
      --config.num_epochs=2 --config.seed=0 --workdir=$w > $w.log 2>&1
    echo "$arm round $round: $(grep -oE 'Epoch +2/2.*' $w.log | grep -o '[0-9.]*s$')"
    rm -rf $w $w.log
  done
done
