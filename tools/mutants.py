"""Mutation check: plants known bugs, one at a time, in a scratch copy of the
package and runs only the tests written to catch each one.

  python tools/mutants.py        (or `make mutants`)

Prints each bug with the test that caught it, and exits 1 if a bug passed its
tests (or the unmutated copy fails them). Real-data tests are not used: every
bug here must be caught by a test on synthetic data.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from typing import NamedTuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COPIED = ('mnist_flax', 'configs', 'tests', 'pyproject.toml')


class Mutant(NamedTuple):
  name: str
  path: str  # relative to the repository root
  old: str  # must occur exactly once in the file
  new: str
  tests: tuple[str, ...]  # pytest node ids that must fail


_RANDOM = 'tests/test_randomness.py::'
_AUGMENT = 'tests/test_augment.py::'
_RESUME_ORDER = _RANDOM + 'test_every_example_once_per_epoch_and_a_resume_continues_the_order'
_ANGLES = _AUGMENT + 'test_rotation_angle_stays_within_degrees_and_covers_them'
_SHIFTS = _AUGMENT + 'test_shift_of_a_bright_pixel_reaches_round_translate_times_28_and_no_more'
_TORCH_AUGMENT = _AUGMENT + 'test_torch_augmentation_draws_the_same_distribution'
_BATCHNORM = 'tests/test_architectures.py::test_batchnorm_matches_torch'
_FOLD = 'tests/test_export.py::test_folded_graph_equals_the_flax_model'

MUTANTS = (
    Mutant('shuffle ignores the epoch', 'mnist_flax/jit_steps.py',
           'jax.random.fold_in(jax.random.fold_in(rng, 0), epoch)',
           'jax.random.fold_in(rng, 0)',
           (_RANDOM + 'test_each_epoch_is_another_permutation_of_every_example',)),
    Mutant('the epoch loop shuffles every epoch as epoch 1', 'mnist_flax/train.py',
           'perm = permute(state.rng, epoch)', 'perm = permute(state.rng, 1)',
           (_RESUME_ORDER,)),
    Mutant("an epoch's partial last batch dropped", 'mnist_flax/epoch_loop.py',
           '  return plan + [([start], size) for start, size in batches if size != batch_size]',
           '  return plan', (_RESUME_ORDER,)),
    Mutant('resume restarts the optimiser state', 'mnist_flax/train.py',
           '  return [r.state for r in restored]',
           '  return [r.state.replace(opt_state=template.opt_state) for r in restored]',
           (_RESUME_ORDER,)),
    Mutant('constant augmentation key', 'mnist_flax/jit_steps.py',
           'jax.random.fold_in(jax.random.fold_in(state.rng, 1), state.step)',
           'jax.random.fold_in(state.rng, 1)',
           (_RANDOM + 'test_each_step_gets_its_own_warps_and_a_restored_step_the_same',)),
    Mutant("the train step warps with the run's key, not the step's",
           'mnist_flax/jit_steps.py', 'augment.augment(_augment_key(state), x,',
           'augment.augment(state.rng, x,',
           (_RANDOM + 'test_train_step_warps_with_the_step_s_key',)),
    Mutant('rotation ignored', 'mnist_flax/augment.py', 'angles = jnp.deg2rad(',
           'angles = 0 * jnp.deg2rad(', (_ANGLES,)),
    Mutant('rotation in radians instead of degrees', 'mnist_flax/augment.py',
           'angles = jnp.deg2rad(', 'angles = (', (_ANGLES,)),
    Mutant('translation doubled', 'mnist_flax/augment.py',
           'jnp.array([translate * h, translate * w])',
           'jnp.array([2 * translate * h, 2 * translate * w])', (_SHIFTS,)),
    Mutant('shift not rounded to whole pixels', 'mnist_flax/augment.py',
           'shifts = jnp.round(', 'shifts = (', (_SHIFTS,)),
    Mutant("reflected border repeats the edge pixel (OpenCV's REFLECT, not REFLECT_101)",
           'mnist_flax/augment.py', "'reflect': 'mirror'", "'reflect': 'reflect'",
           (_AUGMENT + 'test_reflect_border_is_opencv_reflect_101',)),
    Mutant("ColorJitter's contrast about the unrounded mean", 'mnist_flax/augment.py',
           'mean = jnp.floor(x.mean() + 0.5)', 'mean = x.mean()',
           (_AUGMENT + 'test_torchvision_jitter_equals_pil_image_enhance',)),
    Mutant("piecewise schedule's epochs all steps_per_epoch long", 'mnist_flax/optim.py',
           'later = max(steps_per_epoch - 1, 1)', 'later = steps_per_epoch',
           ('tests/test_optim.py::test_piecewise_schedule_is_woolly_custom_one_cycle_every_step',)),
    Mutant('PyTorch side: warp_p ignored', 'mnist_flax/torch_recipe.py',
           '  if aug.warp_p >= 1:', '  if True:',
           ('tests/test_torch_recipe.py::test_anchor_warp_draws_the_same_distribution',)),
    Mutant("PyTorch side: rotation ignored", 'mnist_flax/torch_recipe.py',
           'return torch.deg2rad(angle)', 'return 0 * torch.deg2rad(angle)', (_TORCH_AUGMENT,)),
    Mutant("PyTorch side: translation doubled", 'mnist_flax/torch_recipe.py',
           'max_shift = aug.translate * size', 'max_shift = 2 * aug.translate * size',
           (_TORCH_AUGMENT,)),
    Mutant("BatchNorm momentum in Flax's convention (0.9)", 'mnist_flax/models.py',
           'm = self.momentum', 'm = 1 - self.momentum', (_BATCHNORM,)),
    Mutant('BatchNorm running variance biased', 'mnist_flax/models.py',
           'm * var * (n / max(n - 1, 1))', 'm * var', (_BATCHNORM,)),
    Mutant('BatchNorm eps 1e-3', 'mnist_flax/models.py',
           'rsqrt(var + self.epsilon)', 'rsqrt(var + 1e-3)', (_BATCHNORM,)),
    Mutant('dropout keeps with probability rate, not 1 - rate', 'mnist_flax/models.py',
           "self.make_rng('dropout'), x.shape) >= threshold",
           "self.make_rng('dropout'), x.shape) < threshold",
           ('tests/test_architectures.py::test_dropout_zeroes_at_its_rate_and_scales_the_rest',)),
    Mutant('dropout masks ignore the key', 'mnist_flax/models.py',
           'return _mix(_mix(index ^ k0) ^ k1)', 'return _mix(_mix(index))',
           ('tests/test_architectures.py::'
            'test_dropout_masks_are_independent_across_elements_keys_and_layers',)),
    Mutant('label smoothing ignored', 'mnist_flax/jit_steps.py',
           '  if isinstance(label_smoothing, (int, float)) and not label_smoothing:',
           '  if True:',
           ('tests/test_train.py::test_cross_entropy_matches_torch_label_smoothing',)),
    Mutant("StepLR's gamma ignored", 'mnist_flax/optim.py',
           'learning_rate * gamma ** jnp.floor', 'learning_rate * 1.0 ** jnp.floor',
           ('tests/test_optim.py::test_whole_runs_match_torch_every_step',)),
    Mutant("OneCycle's warm-up a step longer", 'mnist_flax/optim.py',
           'warm_end = float(pct_start * total_steps) - 1',
           'warm_end = float(pct_start * total_steps)',
           ('tests/test_optim.py::test_whole_runs_match_torch_every_step',)),
    Mutant("held-out writers' digits trained on", 'mnist_flax/data.py',
           'ds = Dataset(ds.train_images[~held], ds.train_labels[~held],',
           'ds = Dataset(ds.train_images, ds.train_labels,',
           ('tests/test_writers.py::test_no_held_out_writer_trains_and_the_split_is_fixed',)),
    Mutant("a sweep's runs shared out over devices with their values shifted by the padding",
           'mnist_flax/train.py', 'for run in runs + runs[-1:] * padding]',
           'for run in runs[-1:] * padding + runs]',
           ('tests/test_runs_axis.py::test_sweep_runs_shared_out_over_devices_equal_single_runs[2]',)),
    Mutant("a user's Conv2d imported without its padding", 'mnist_flax/torch_import.py',
           'self.layers.append(arch.Conv(path, m.out_channels, kernel, padding,',
           'self.layers.append(arch.Conv(path, m.out_channels, kernel, 0,',
           ('tests/test_torch_import.py::test_counts_and_logits_equal_torch',)),
    Mutant("Adam's weight decay ignored", 'mnist_flax/optim.py',
           'return optax.chain(optax.add_decayed_weights(weight_decay),\n'
           '                     optax.scale_by_adam',
           'return optax.chain(optax.scale_by_adam',
           ('tests/test_optim.py::test_adam_step_lr_matches_torch',)),
    Mutant("BatchNorm folded without its running mean", 'mnist_flax/export.py',
           "- np.asarray(stats[layer.name]['mean'], np.float64) * s)", ')',
           (_FOLD,)),
    Mutant('int8 calibrated on test images', 'mnist_flax/export.py',
           '  train = ds.train_images\n', '  train = ds.test_images\n',
           ('tests/test_export.py::test_calibration_reads_only_training_images',)),
)


def _pytest(scratch: str, tests: tuple[str, ...]) -> tuple[int, str]:
  env = {k: v for k, v in os.environ.items() if k != 'MNIST_DIR'}
  env['PYTHONPATH'] = scratch  # the scratch copy, not an installed package
  proc = subprocess.run([sys.executable, '-m', 'pytest', '-q', '-x', '-rf',
                         '-p', 'no:cacheprovider', *tests],
                        cwd=scratch, env=env, capture_output=True, text=True)
  return proc.returncode, proc.stdout + proc.stderr


def main() -> int:
  """Runs every mutant; returns the exit status."""
  start = time.time()
  with tempfile.TemporaryDirectory(prefix='mnist_flax_mutants_') as scratch:
    for name in COPIED:
      source = os.path.join(ROOT, name)
      if os.path.isdir(source):
        shutil.copytree(source, os.path.join(scratch, name),
                        ignore=shutil.ignore_patterns('__pycache__'))
      else:
        shutil.copy(source, scratch)
    # One compilation cache for all runs (conftest uses it when set).
    os.environ['JAX_COMPILATION_CACHE_DIR'] = os.path.join(scratch, '.jax_cache')
    all_tests = tuple(dict.fromkeys(t for m in MUTANTS for t in m.tests))
    code, out = _pytest(scratch, all_tests)
    if code != 0:
      print(f'The unmutated copy fails its tests:\n{out[-3000:]}')
      return 1
    survivors = 0
    for m in MUTANTS:
      path = os.path.join(scratch, m.path)
      with open(path) as f:
        original = f.read()
      if original.count(m.old) != 1:
        print(f'ERROR   {m.name}: {m.old!r} occurs {original.count(m.old)} times '
              f'in {m.path}; update tools/mutants.py')
        survivors += 1
        continue
      with open(path, 'w') as f:
        f.write(original.replace(m.old, m.new))
      try:
        code, out = _pytest(scratch, m.tests)
      finally:
        with open(path, 'w') as f:
          f.write(original)
      failed = re.findall(r'^FAILED (\S+)', out, re.M)
      if code == 1 and failed:
        print(f'caught  {m.name}  <- {", ".join(failed)}')
      else:
        survivors += 1
        why = 'PASSED its tests' if code == 0 else f'broke the run (exit {code})'
        print(f'MISSED  {m.name}: {why}: {", ".join(m.tests)}')
        if code not in (0, 1):
          print(out[-2000:])
  print(f'{len(MUTANTS) - survivors} of {len(MUTANTS)} planted bugs caught '
        f'in {time.time() - start:.0f} s')
  return 1 if survivors else 0


if __name__ == '__main__':
  sys.exit(main())
