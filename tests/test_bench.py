"""mnist_flax.bench runs end to end and reports every measurement (small data)."""

import pytest

from mnist_flax import bench, data

pytest.importorskip('torch')


def test_bench_reports_every_measurement(big_fake_mnist_dir):
  config = bench.load_config('v36')
  config.data_dir, config.verify_checksums = big_fake_mnist_dir, False
  ds = data.load_for(config)  # 4,096 training images: a short epoch
  result = bench.bench_model('v36', ds, repeats=2, steps=3, workers=0,
                             torch_compile=False, log=lambda _: None)
  for key in ('train_images_per_s', 'epoch_s', 'eval_images_per_s', 'first_step_s',
              'peak_memory_mb'):
    assert all(v > 0 for v in result[key].values()), key
  assert set(result['train_images_per_s']) == {'jax', 'torch'}
  table = bench.format_table([result], bench.machine())
  assert 'train img/s, batch 128 (eager)' in table
  assert 'torch.compile not run' in table
  assert table.splitlines()[0].startswith('machine: ')


def test_unknown_model_is_a_user_error():
  with pytest.raises(bench.UserError, match="no config for model 'v37'"):
    bench.load_config('v37')
