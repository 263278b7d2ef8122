#!/usr/bin/env bash
# usage: run.sh CORE SEED...   (each seed: the three arms in turn)
core=$1; shift
cd /work/frozen29
common="--config.validation_examples=10000 --config.validation_split=writers --config.writers_file=/work/shared/qmnist/qmnist-train-labels-idx2-int.gz --config.data_dir=/work/shared/mnist --config.progress_bar=False"
for seed in "$@"; do
  for arm in model3 unpadded v36pad; do
    case $arm in
      model3) cfg="--config=configs/model3.py";;
      unpadded) cfg="--config=configs/champion.py --config.model=v36:8-12-14-18-16";;
      v36pad) cfg="--config=configs/champion.py";;
    esac
    grep -q "Average accuracy" /work/runs29/${arm}_seed$seed.log 2>/dev/null && continue  # finished
    cmd="taskset -c $core nice -n 5 /work/main/.venv/bin/python -m mnist_flax.main $cfg $common --config.seed=$seed --workdir=/work/runs29/$arm/seed_$seed"
    echo "$(date -u +%FT%T) START $cmd" >> /work/runs29/commands.log
    $cmd >> /work/runs29/${arm}_seed$seed.log 2>&1  # append: a resumed run keeps its first epochs
    echo "$(date -u +%FT%T) END rc=$? $arm seed $seed" >> /work/runs29/commands.log
  done
done
