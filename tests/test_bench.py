"""mnist_flax.bench: its models are the configs, its PyTorch side their recipe, and it
runs end to end and reports every measurement (small data)."""

import glob
import os

import pytest

from mnist_flax import bench, data

pytest.importorskip('torch')


def test_bench_reports_every_measurement(big_fake_mnist_dir):
  config = bench.load_config('v36')
  config.data_dir, config.verify_checksums = big_fake_mnist_dir, False
  ds = data.load_for(config)  # 4,096 training images: a short epoch
  result = bench.bench_model('v36', ds, repeats=1, steps=3, workers=0,
                             torch_compile=False, log=lambda _: None)
  for key in ('train_images_per_s', 'epoch_s', 'eval_images_per_s', 'first_step_s',
              'peak_memory_mb'):
    assert all(v > 0 for v in result[key].values()), key
  assert set(result['train_images_per_s']) == {'jax', 'torch'}
  table = bench.format_table([result], bench.machine())
  assert 'train img/s, batch 128 (eager)' in table
  assert 'torch.compile not run' in table
  assert table.splitlines()[0].startswith('machine: ')


def test_augmentation_the_dataloader_cannot_do_is_reported_not_fatal(fake_mnist_dir):
  """anchor_eva6's ColorJitter and fill: the per-sample PIL loader's row says why
  it is missing; every other measurement is made."""
  config = bench.load_config('anchor_eva6')
  config.data_dir, config.verify_checksums = fake_mnist_dir, False
  result = bench.bench_model('anchor_eva6', data.load_for(config), repeats=1, steps=2,
                             workers=0, torch_compile=False, log=lambda _: None)
  assert set(result['epoch_s']) == {'jax'} and result['epoch_s']['jax'] > 0
  table = bench.format_table([result], bench.machine())
  assert 'DataLoader epoch unavailable: the per-sample PIL loader' in table
  assert 'eval img/s' in table


def test_runs_per_hour_ours_against_k_pytorch_processes(big_fake_mnist_dir):
  rows = bench.runs_per_hour('v36', [2], 2560, big_fake_mnist_dir, verify=False,
                             log=lambda _: None)
  (row,) = rows
  assert row['runs'] == 2 and len(row['torch_epoch_s']) == 2
  assert row['jax_epoch_s'] > 0 and all(t > 0 for t in row['torch_epoch_s'])
  # 2 runs of 2,560 images an epoch: 2 * 3600 / epoch_s run-epochs an hour, 1/351.6 of a run each.
  assert row['jax_runs_per_hour'] == pytest.approx(2 * 3600 / row['jax_epoch_s'] / 351.5625)
  assert bench.format_runs(rows).splitlines()[1].split()[:2] == ['v36', '2']


def test_unknown_model_is_a_user_error():
  with pytest.raises(bench.UserError, match="no config for model 'v37'"):
    bench.load_config('v37')


def test_every_config_is_a_model():
  paths = sorted(glob.glob(os.path.join(bench._ROOT, 'configs', '*.py')))
  assert bench.config_names() == [os.path.basename(p)[:-3] for p in paths]
  assert bench.load_config('champion').model == 'v36:8-12-14-18-16'


@pytest.mark.parametrize('model,num_examples,attribute,steps', [
    ('v36', 60000, 'total_steps', 15 * 469),   # OneCycleLR over 15 epochs
    ('model3', 60000, 'step_size', 8 * 938),   # StepLR every 8 epochs, batch 64
    ('v36', 4096, 'total_steps', 15 * 32)])
def test_torch_schedule_follows_the_batch_size_and_data(model, num_examples, attribute,
                                                        steps):
  scheduler = bench.Torch(bench.load_config(model), num_examples).scheduler
  assert getattr(scheduler, attribute) == steps
