#!/usr/bin/env bash
# Issue 19's accelerator measurement as one prepared run: under 8 minutes on one
# H100/H200, the tables written under OUT as JSON and logs.
#
#   bash tools/gpu_measure.sh OUT MNIST_DIR            # on the device machine
#   TINY=1 bash tools/gpu_measure.sh OUT MNIST_DIR     # the same steps on CPU, tiny
#
# V36 (configs/v36.py, 15 epochs): 1, 8 and 32 seeds in one program at JAX's
# default precision (TF32 convolutions on Hopper), 16 seeds at full float32 and 8
# in bfloat16; then PyTorch's same recipe on the same card (data and augmentation
# on the GPU, compare.train_torch), eager, then channels_last through
# torch.compile with CUDA graphs. runs.json summarises every JAX program
# (tools/run_summary.py); compare_*.log have PyTorch's accuracy and wall time.
set -euo pipefail
out=$1
data=$2
mkdir -p "$out/logs"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
args=(--config=configs/v36.py --config.data_dir="$data" --config.progress_bar=False)
torch_device=cuda
if [[ -n "${TINY:-}" ]]; then
  args+=(--config.num_epochs=2 --config.train_examples=1024 --config.verify_checksums=False)
  torch_device=cpu
  k=(1 2 4 2 2)
else
  k=(1 8 32 16 8)
fi

{
  date -u
  nvidia-smi -L 2>/dev/null || echo 'no nvidia-smi'
  python -c 'import jax, flax, optax; print("jax", jax.__version__, "flax", flax.__version__,
    "optax", optax.__version__, jax.devices())'
  python -c 'import torch; print("torch", torch.__version__, torch.cuda.is_available())'
} > "$out/logs/versions.txt" 2>&1

run() {  # NAME ARGS...: one mnist_flax.main program, timed from launch to exit
  local name=$1
  shift
  local start=$SECONDS
  python -m mnist_flax.main "${args[@]}" --workdir="$out/runs/$name" "$@" \
    > "$out/logs/$name.log" 2>&1
  echo "$name $((SECONDS - start))" >> "$out/logs/process_s.txt"
}

run k1 --config.num_seeds="${k[0]}"
run k8 --config.num_seeds="${k[1]}"
run k32 --config.num_seeds="${k[2]}"
run float32_k16 --config.num_seeds="${k[3]}" --config.precision=float32
run bfloat16_k8 --config.num_seeds="${k[4]}" --config.precision=bfloat16
python tools/run_summary.py "$out"/runs/* > "$out/runs.json"

compare() {  # NAME FLAGS...: JAX and PyTorch, one seed each, in one process
  local name=$1
  shift
  local start=$SECONDS
  python -m mnist_flax.compare "${args[@]}" --seeds=1 --torch_device="$torch_device" \
    --workdir="$out/runs_$name" "$@" > "$out/logs/$name.log" 2>&1
  echo "$name $((SECONDS - start))" >> "$out/logs/process_s.txt"
}

compare compare_eager
compare compare_compiled --channels_last --torch_compile=reduce-overhead
echo done
