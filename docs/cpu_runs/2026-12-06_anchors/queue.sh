#!/usr/bin/env bash
# usage: run.sh CORE WAIT_PID JOB...   JOB: cmp:ANCHOR:SEED (compare, JAX + PyTorch) or jax:ANCHOR:SEED (main)
core=$1; wait_pid=$2; shift 2
while kill -0 "$wait_pid" 2>/dev/null; do sleep 30; done
cd /work/frozen_anchors
log=/work/runs_anchors/commands.log
data="--config.data_dir=/work/shared/mnist --config.progress_bar=False"
for job in "$@"; do
  IFS=: read kind anchor seed <<< "$job"
  cfg="--config=configs/anchor_$anchor.py $data --config.seed=$seed"
  if [ "$kind" = cmp ]; then
    cmd="taskset -c $core nice -n 5 /work/main/.venv/bin/python -m mnist_flax.compare $cfg --seeds=1 --workdir=/work/runs_anchors/$anchor/compare_s$seed"
  else
    cmd="taskset -c $core nice -n 5 /work/main/.venv/bin/python -m mnist_flax.main $cfg --workdir=/work/runs_anchors/$anchor/seed_$seed"
  fi
  echo "$(date -u +%FT%T) START (frozen_anchors @$(git rev-parse --short HEAD)) $cmd" >> $log
  OMP_NUM_THREADS=1 $cmd > /work/runs_anchors/${kind}_${anchor}_s$seed.log 2>&1
  echo "$(date -u +%FT%T) END rc=$? $job" >> $log
done
