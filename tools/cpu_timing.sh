#!/usr/bin/env bash
# The CPU settings for one run and for two runs, timed one after another on a
# quiet machine (docs/performance.md, "Runs across the cores"):
#   bash tools/cpu_timing.sh MNIST_DIR OUT_DIR
# Seconds of epoch 2 of 2 (epoch 1 compiles), V36 (configs/v36.py), real MNIST;
# then 5-epoch whole processes, ours (default devices) and PyTorch's (eager, its
# default threads). EXAMPLES=N trains on the first N images (a quick check).
set -euo pipefail
cd "$(dirname "$0")/.."
data=$1 out=$2
mkdir -p "$out"
py=${PYTHON:-.venv/bin/python}
examples=${EXAMPLES:-0}
main=("$py" -m mnist_flax.main --config=configs/v36.py "--config.data_dir=$data"
      --config.progress_bar=False "--config.train_examples=$examples")

epoch2() {  # NAME ARGS...: one program, 2 epochs; prints epoch 2's seconds
  local name=$1; shift
  rm -rf "$out/$name"
  "$@" --config.num_epochs=2 "--workdir=$out/$name" > "$out/$name.log" 2>&1
  grep -m1 'Epoch  2/2' "$out/$name.log" | sed 's/.*| \([0-9.]*\)s$/\1/'
}

{
  echo "setting | epoch 2 s | runs"
  echo "one run, one device (--cpu_devices=0, the old default) | $(epoch2 one_dev0 "${main[@]}" --cpu_devices=0) | 1"
  echo "one run, default (one device per core) | $(epoch2 one_default "${main[@]}") | 1"
  echo "two seeds, one device (--cpu_devices=0, the old program) | $(epoch2 two_dev0 "${main[@]}" --cpu_devices=0 --config.num_seeds=2) | 2"
  echo "two seeds, default (runs shared out over the cores) | $(epoch2 two_default "${main[@]}" --config.num_seeds=2) | 2"
  epoch2 pinned0 taskset -c 0 "${main[@]}" --cpu_devices=0 > "$out/pinned0.s" &
  epoch2 pinned1 taskset -c 1 "${main[@]}" --cpu_devices=0 --config.seed=1 > "$out/pinned1.s"
  wait
  echo "two processes, one per core (taskset -c 0 / -c 1) | $(cat "$out/pinned0.s") / $(cat "$out/pinned1.s") | 2"
} | tee "$out/epochs.txt"

# Whole processes, 5 epochs each, one after the other.
start=$(date +%s.%N)
"${main[@]}" --config.num_epochs=5 "--workdir=$out/ours5" > "$out/ours5.log" 2>&1
ours=$(echo "$(date +%s.%N) - $start" | bc)
start=$(date +%s.%N)
"$py" -c "
from configs import v36
from mnist_flax import compare, data
c = v36.get_config(); c.num_epochs = 5
ds = data.load('mnist', '$data', train_examples=$examples)
compare.train_torch(c, ds)" > "$out/torch5.log" 2>&1
torch=$(echo "$(date +%s.%N) - $start" | bc)
printf 'whole process, 5 epochs: ours %.1f s, pytorch %.1f s, ratio %.2fx\n' \
  "$ours" "$torch" "$(echo "$torch / $ours" | bc -l)" | tee -a "$out/epochs.txt"
