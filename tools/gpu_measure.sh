#!/usr/bin/env bash
# The accelerator measurements as prepared runs, one device call per phase, each
# ending inside BUDGET_S seconds (default 330) on one H100/H200: no step starts
# after that, and a running one is stopped there. What finished is packed, after
# every step, into OUT/results.tgz (logs, JSON tables, sweep.csv and metrics, no
# checkpoints).
#
#   bash tools/gpu_measure.sh 19 OUT MNIST_DIR          # speed against PyTorch, precision, a
#                                                       # cutout sweep
#   bash tools/gpu_measure.sh 21 OUT MNIST_DIR PRIOR    # the separable layout's cutout screen,
#                                                       # and the test runs the rule picks
#                                                       # (PRIOR: phase 19's results and the
#                                                       # CPU tiny screen's, unpacked)
#   bash tools/gpu_measure.sh kd OUT MNIST_DIR          # the distillation track
#   bash tools/gpu_measure.sh pad OUT MNIST_DIR PRIOR   # the padded layouts' screen (PRIOR as
#                                                       # for 21)
#   bash tools/gpu_measure.sh writers OUT MNIST_DIR     # the writer split's judge check (MNIST_DIR
#                                                       # holds QMNIST's writer file too)
#   bash tools/gpu_measure.sh anchors OUT MNIST_DIR     # the public anchors: 10 seeds in JAX,
#                                                       # 3 in both frameworks
#   bash tools/gpu_measure.sh rebuild OUT MNIST_DIR     # the anchors' ingredients on our networks,
#                                                       # on the writer split (MNIST_DIR as for writers)
#   bash tools/gpu_measure.sh '19 21' OUT MNIST_DIR     # several phases, in one call
#   STEPS='k1 k8' bash tools/gpu_measure.sh ...         # only the steps named
#   TINY=1 bash tools/gpu_measure.sh ...                # the same steps on CPU, tiny
#                                                       # (python3 with the deps: PATH=.venv/bin:$PATH)
#
# The phase names (19, 21, kd, pad, writers, anchors, rebuild) are fixed argument values, kept
# as they are; what each runs:
# Phase 19 (speed, precision, a sweep), V36 (configs/v36.py, 15 epochs) unless
# named: 1 seed; PyTorch's same recipe on the same card
# (tools/torch_timing.py), eager; 32 seeds in one program; the champion's
# cutout screen on the validation split, a sweep of 3 values x 12 seeds
# (docs/research.md); PyTorch compiled (CUDA graphs, channels_last); 16 seeds
# in full float32, 8 in bfloat16; 8 seeds; V36's convolutions for 1, 8 and 32
# runs, vmapped against batched patches (tools/conv_forms.py).
# Phase 21 (the layout screens' rest): the separable layout's cutout
# screen, then the rule's picks (tools/screen_decide.py) on the test set, 10
# seeds each: the champion's from PRIOR's screen_champion and this screen,
# tiny's from the CPU screen in PRIOR (docs/cpu_runs).
# Phase pad (the padded layouts' screen): V36's layout with conv1..conv3
# padded (v36pad, v36pad_tiny: the incumbents' widths and parameters) on the
# validation split, 12 seeds each, against PRIOR's incumbent arms; a
# challenger that wins goes to the test set.
# Phase writers (the writer split as a judge): Model 3 (its recipe), the
# champion's unpadded network and v36pad on the validation split by writer, 8
# seeds each (0-7), one program each; docs/research.md has the rule, written
# before any run.
# Phase anchors: configs/anchor_eva6.py and anchor_woolly.py on the test set, 10
# seeds each in one program, then compare's 3 seeds in both frameworks.
# Phase rebuild: the screen that rebuilds the champion and tiny from the
# anchors' ingredients, 8 seeds per arm on the writer split, one program each.
# Phase kd (the distillation track): a teacher (v36:16-24-32-48-48, 46,066
# params) trained on the validation split's 50,000 images; the champion
# distilled from it, a sweep of distill.alpha 0, 0.5, 0.9 x 12 seeds on
# validation; the teacher on all 60,000; the rule's alpha on the test set, 10
# seeds (docs/research.md). Every program saves only its final checkpoint
# (checkpoint_every=15): a save costs ~0.2 s per run, over a minute for a
# 32-run program saving every epoch.
set -uo pipefail
phase=$1
out=$2
data=$3
work=/tmp/gpu_work
prior=${4:-$work}
budget=${BUDGET_S:-330}
mkdir -p "$work/logs" "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export JAX_COMPILATION_CACHE_DIR=/tmp/jax_cache
common=(--config.data_dir="$data" --config.progress_bar=False --config.verify_checksums=False
        --config.checkpoint_every=15)
validation=(--config.validation_examples=10000)
torch_args=("$data" cuda)
conv_args=()
seeds() { echo "$1"; }
if [[ -n "${TINY:-}" ]]; then
  # The accelerator path on CPU: scanned dispatches and vmapped runs.
  common+=(--config.num_epochs=2 --config.train_examples=1024
           --config.steps_per_dispatch=4 --config.seed_parallelism=vmap)
  validation=(--config.validation_examples=256)
  torch_args=("$data" cpu --num_epochs=2 --train_examples=1024)
  conv_args=(--runs=1,2 --repeats=2 --batch=16)
  seeds() { echo 2; }
fi

{
  date -u
  nvidia-smi -L 2>/dev/null || echo 'no nvidia-smi'
  python3 -c 'import jax, flax, optax, orbax.checkpoint as o; print("jax", jax.__version__,
    "flax", flax.__version__, "optax", optax.__version__, "orbax", o.__version__, jax.devices())'
  python3 -c 'import torch; print("torch", torch.__version__, torch.cuda.is_available())'
} > "$work/logs/versions.txt" 2>&1

pack() {
  tar czf "$out/results.tgz" --exclude=checkpoints --exclude='events.out.*' -C "$work" .
}

wanted() {  # NAME: whether STEPS (if set) names this step
  [[ -z "${STEPS:-}" || " $STEPS " == *" $1 "* ]]
}

step() {  # NAME COMMAND...: run unless past the budget; output to logs/NAME.log
  local name=$1
  shift
  wanted "$name" || return 0
  local left=$((budget - SECONDS))
  if ((left <= 5)); then
    echo "$name skipped (budget)" >> "$work/logs/steps.txt"
    return
  fi
  local start=$SECONDS
  timeout "$left" "$@" > "$work/logs/$name.log" 2>&1
  echo "$name rc=$? $((SECONDS - start))s" >> "$work/logs/steps.txt"
  pack
}

train() {  # NAME CONFIG FLAGS...: one mnist_flax.main program
  local name=$1 config=$2
  shift 2
  step "$name" python3 -m mnist_flax.main --config="configs/$config.py" "${common[@]}" \
    --workdir="$work/runs/$name" "$@"
}

torch_run() {  # NAME FLAGS...: PyTorch, V36, one seed, its JSON in NAME.json
  local name=$1
  shift
  step "$name" sh -c "python3 tools/torch_timing.py configs/v36.py ${torch_args[*]} $* \
    > $work/$name.json"
}

screen() {  # NAME CONFIG FLAGS...: a validation sweep over cutout
  local name=$1 config=$2
  shift 2
  train "$name" "$config" "${validation[@]}" --config.num_seeds="$(seeds 12)" \
    --sweep=augment.cutout=0,6,10 "$@"
}

confirm() {  # NAME CONFIG INCUMBENT_SCREEN SCREEN...: the rule's pick, on the test set
  local name=$1 config=$2
  shift 2
  wanted "$name" || return 0
  python3 tools/screen_decide.py augment.cutout "$1" 0 "${@:2}" \
    > "$work/$name.decision.json" || return
  read -r model cutout pick < <(tail -n 1 "$work/$name.decision.json")
  if [[ -n "${NEW_ONLY:-}" && $pick == incumbent ]]; then
    # The incumbent's 10-seed test run is already in docs/research.md.
    echo "$name skipped (the incumbent stays)" >> "$work/logs/steps.txt"
    return
  fi
  train "$name" "$config" --config.model="$model" --config.augment.cutout="$cutout" \
    --config.num_seeds="$(seeds 10)"
}

confirm_kd() {  # the distillation screen's alpha, on the test set
  wanted confirm_kd || return 0
  python3 tools/screen_decide.py distill.alpha "$work/runs/kd_screen" 0 \
    > "$work/confirm_kd.decision.json" || return
  read -r _ alpha _ < <(tail -n 1 "$work/confirm_kd.decision.json")
  train confirm_kd champion --config.num_seeds="$(seeds 10)" \
    --config.distill.teacher="$work/runs/kd_teacher" --config.distill.alpha="$alpha"
}

if [[ " $phase " == *" 19 "* ]]; then
  train k1 v36 --config.num_seeds=1
  torch_run torch_eager
  train k32 v36 --config.num_seeds="$(seeds 32)"
  screen screen_champion champion
  torch_run torch_compiled --compile=reduce-overhead --channels_last
  train float32_k16 v36 --config.num_seeds="$(seeds 16)" --config.precision=float32
  train bfloat16_k8 v36 --config.num_seeds="$(seeds 8)" --config.precision=bfloat16
  train k8 v36 --config.num_seeds="$(seeds 8)"
  step conv_forms sh -c "python3 tools/conv_forms.py ${conv_args[*]} > $work/conv_forms.json"
  python3 tools/run_summary.py "$work"/runs/{k1,k32,float32_k16,bfloat16_k8,k8} \
    > "$work/runs.json" 2> "$work/logs/run_summary.log"
  pack
fi
if [[ " $phase " == *" 21 "* ]]; then
  screen screen_v36sep champion --config.model=v36sep
  confirm confirm_champion champion "$prior/runs/screen_champion" "$work/runs/screen_v36sep"
  confirm confirm_tiny tiny "$prior/runs/screen_tiny" "$prior/runs/screen_v36sep_tiny"
  python3 tools/run_summary.py "$work"/runs/confirm_* > "$work/confirm_runs.json" \
    2> "$work/logs/confirm_summary.log"
fi
if [[ " $phase " == *" pad "* ]]; then
  # conv1..conv3 padded, at the champion's and tiny's widths and counts, against
  # the incumbents' cutout-0 arms in PRIOR; a pick other than the incumbent goes
  # to the test set (docs/research.md).
  NEW_ONLY=1
  train screen_v36pad champion --config.model=v36pad "${validation[@]}" \
    --config.num_seeds="$(seeds 12)" --sweep=augment.cutout=0
  confirm confirm_v36pad champion "$prior/runs/screen_champion" "$work/runs/screen_v36pad"
  train screen_v36pad_tiny tiny --config.model=v36pad_tiny "${validation[@]}" \
    --config.num_seeds="$(seeds 12)" --sweep=augment.cutout=0
  confirm confirm_v36pad_tiny tiny "$prior/runs/screen_tiny" "$work/runs/screen_v36pad_tiny"
  NEW_ONLY=
fi
if [[ " $phase " == *" writers "* ]]; then
  writers=("${validation[@]}" --config.validation_split=writers --config.num_seeds="$(seeds 8)")
  train writers_model3 model3 "${writers[@]}"
  train writers_unpadded champion --config.model=v36:8-12-14-18-16 "${writers[@]}"
  train writers_v36pad champion --config.model=v36pad "${writers[@]}"
  python3 tools/run_summary.py "$work"/runs/writers_* > "$work/writers_runs.json" \
    2> "$work/logs/writers_summary.log"
fi
if [[ " $phase " == *" anchors "* ]]; then
  # The public anchors on the test set: 10 seeds each in JAX, then 3 each in
  # both frameworks through compare (docs/anchors.md).
  train anchors_eva6 anchor_eva6 --config.num_seeds="$(seeds 10)"
  train anchors_woolly anchor_woolly --config.num_seeds="$(seeds 10)"
  for anchor in eva6 woolly; do
    step "compare_$anchor" python3 -m mnist_flax.compare --config="configs/anchor_$anchor.py" \
      "${common[@]}" --seeds="$(seeds 3)" --torch_device="${torch_args[1]}" \
      --workdir="$work/runs/compare_$anchor"
  done
  python3 tools/run_summary.py "$work"/runs/anchors_* > "$work/anchors_runs.json" \
    2> "$work/logs/anchors_summary.log"
fi
if [[ " $phase " == *" rebuild "* ]]; then
  # The champion and tiny rebuilt from the anchors' ingredients, on the writer
  # split, 8 seeds per arm (docs/research.md has the rule, written before any
  # run); the unpadded champion network and v36pad are phase writers' arms.
  writers=("${validation[@]}" --config.validation_split=writers --config.num_seeds="$(seeds 8)")
  a_augment=(--config.augment.jitter=torchvision --config.augment.brightness=0.4
             --config.augment.contrast=0.4 --config.augment.degrees=5 --config.augment.translate=0
             --config.augment.interpolation=nearest --config.augment.fill=0.171)
  train rebuild_eva6 anchor_eva6 "${writers[@]}"
  train rebuild_unpadded_a_augment champion --config.model=v36:8-12-14-18-16 \
    "${a_augment[@]}" "${writers[@]}"
  train rebuild_unpadded_b_recipe anchor_woolly --config.model=v36:8-12-14-18-16 "${writers[@]}"
  train rebuild_tiny_unpadded tiny --config.model=v36:6-8-10-12-12 "${writers[@]}"
  train rebuild_tiny_v36pad tiny --config.model=v36pad_tiny "${writers[@]}"
  train rebuild_woolly anchor_woolly "${writers[@]}"
  train rebuild_tiny_b_recipe anchor_woolly --config.model=v36:6-8-10-12-12 "${writers[@]}"
  train rebuild_tiny_a_augment tiny --config.model=v36:6-8-10-12-12 "${a_augment[@]}" \
    "${writers[@]}"
  python3 tools/run_summary.py "$work"/runs/rebuild_* > "$work/rebuild_runs.json" \
    2> "$work/logs/rebuild_summary.log"
fi
if [[ " $phase " == *" kd "* ]]; then
  teacher=(--config.model=v36:16-24-32-48-48 --config.seed=100)
  train kd_teacher_val champion "${teacher[@]}" "${validation[@]}"
  train kd_screen champion "${validation[@]}" --config.num_seeds="$(seeds 12)" \
    --config.distill.teacher="$work/runs/kd_teacher_val" --sweep=distill.alpha=0.0,0.5,0.9
  train kd_teacher champion "${teacher[@]}"
  confirm_kd
  python3 tools/run_summary.py "$work"/runs/{kd_teacher,confirm_kd} > "$work/kd_runs.json" \
    2> "$work/logs/kd_summary.log"
fi
pack
echo "done in ${SECONDS}s"
