#!/usr/bin/env bash
# usage: [ARMS="a b"] run.sh CORE WAIT_PID SEED...   each seed: the rebuild screen's 8 new arms in turn
# (docs/research.md, "Rebuilding the champion and tiny"; the same flags as tools/gpu_measure.sh rebuild)
core=$1; wait_pid=$2; shift 2
while kill -0 "$wait_pid" 2>/dev/null; do sleep 30; done
cd /work/frozen_rebuild
log=/work/runs_rebuild/commands.log
writers="--config.validation_examples=10000 --config.validation_split=writers --config.writers_file=/work/shared/qmnist/qmnist-train-labels-idx2-int.gz --config.data_dir=/work/shared/mnist --config.progress_bar=False"
a_aug="--config.augment.jitter=torchvision --config.augment.brightness=0.4 --config.augment.contrast=0.4 --config.augment.degrees=5 --config.augment.translate=0 --config.augment.interpolation=nearest --config.augment.fill=0.171"
for seed in "$@"; do
  for arm in ${ARMS:-eva6 unpadded_a_augment unpadded_b_recipe tiny_unpadded tiny_v36pad woolly tiny_b_recipe tiny_a_augment}; do
    case $arm in
      eva6) cfg="--config=configs/anchor_eva6.py";;
      unpadded_a_augment) cfg="--config=configs/champion.py --config.model=v36:8-12-14-18-16 $a_aug";;
      unpadded_b_recipe) cfg="--config=configs/anchor_woolly.py --config.model=v36:8-12-14-18-16";;
      tiny_unpadded) cfg="--config=configs/tiny.py --config.model=v36:6-8-10-12-12";;
      tiny_v36pad) cfg="--config=configs/tiny.py";;  # v36pad_tiny: configs/tiny.py at 4b5cb04 (unpadded since 2026-12-07)
      woolly) cfg="--config=configs/anchor_woolly.py";;
      tiny_b_recipe) cfg="--config=configs/anchor_woolly.py --config.model=v36:6-8-10-12-12";;
      tiny_a_augment) cfg="--config=configs/tiny.py --config.model=v36:6-8-10-12-12 $a_aug";;
    esac
    grep -q "Average accuracy" /work/runs_rebuild/${arm}_s$seed.log 2>/dev/null && continue  # finished
    cmd="taskset -c $core nice -n 5 /work/main/.venv/bin/python -m mnist_flax.main $cfg $writers --config.seed=$seed --workdir=/work/runs_rebuild/$arm/seed_$seed"
    echo "$(date -u +%FT%T) START (frozen_rebuild @$(git rev-parse --short HEAD)) $cmd" >> $log
    OMP_NUM_THREADS=1 $cmd >> /work/runs_rebuild/${arm}_s$seed.log 2>&1  # append: a resumed run keeps its first epochs
    echo "$(date -u +%FT%T) END rc=$? $arm seed $seed" >> $log
  done
done
