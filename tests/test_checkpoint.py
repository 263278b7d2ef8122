"""Checkpoints, resume, evaluate and predict: checkpoints that survive a crash."""

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
from PIL import Image

from mnist_flax import checkpoint, data, evaluate, jit_steps, kill_switch, predict, train
from conftest import small_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(data_dir, epochs=3):
  return small_config(data_dir, epochs, keep_checkpoints=3)


def _without_times(history):
  return [{k: v for k, v in r.items() if k != 'epoch_time_s'} for r in history]


def _jsonl(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return _without_times(json.loads(line) for line in f)


def _cli(*args, **kwargs):
  return subprocess.Popen([sys.executable, '-m', *args], cwd=ROOT, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def _corrupt(workdir, step):
  """Overwrites every file of a checkpoint with garbage of the same size."""
  for root, _, files in os.walk(os.path.join(workdir, 'checkpoints', str(step))):
    for name in files:
      path = os.path.join(root, name)
      size = os.path.getsize(path)
      with open(path, 'wb') as f:
        f.write(b'\x07' * max(size, 1))


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory):
  """The CLI arguments of a 3-epoch run of 16 steps an epoch, and its workdir."""
  from conftest import write_fake_mnist  # pylint: disable=g-import-not-at-top
  data_dir = tmp_path_factory.mktemp('fake')
  write_fake_mnist(data_dir, n_train=1024)
  args = ['mnist_flax.main', '--config=configs/v36.py',
          f'--config.data_dir={data_dir}', '--config.verify_checksums=False',
          '--config.batch_size=64', '--config.num_epochs=3',
          '--config.progress_bar=False', '--config.steps_per_dispatch=4']
  workdir = tmp_path_factory.mktemp('clean') / 'w'
  clean = _cli(*args, f'--workdir={workdir}')
  _, err = clean.communicate(timeout=300)
  assert clean.returncode == 0, err
  return args, workdir


@pytest.mark.parametrize('moment', [
    'step:22',  # mid-epoch 2, inside a dispatch of 4 steps (17-20, 21-24)
    'save:32',  # inside the save of epoch 2, before orbax's rename
])
def test_sigkill_then_resume_equals_uninterrupted(uninterrupted, tmp_path, moment):
  args, clean = uninterrupted
  workdir = tmp_path / 'killed'
  killed = _cli(*args, f'--workdir={workdir}',
                env={**os.environ, kill_switch.ENV: moment})
  out, err = killed.communicate(timeout=300)
  assert killed.returncode == -signal.SIGKILL, err
  assert checkpoint.Checkpoints(str(workdir), read_only=True).steps() == [16]
  leftovers = [n for n in os.listdir(workdir / 'checkpoints') if 'tmp' in n]
  # Killed mid-save: the half-made checkpoint is there, under a name no reader takes.
  assert bool(leftovers) == moment.startswith('save'), leftovers

  resumed = _cli(*args, f'--workdir={workdir}')
  out, err = resumed.communicate(timeout=300)
  assert resumed.returncode == 0, err
  assert 'Resuming from the checkpoint of epoch 1 (step 16)' in out
  assert _jsonl(workdir) == _jsonl(clean)
  assert len(_jsonl(workdir)) == 3

  if moment.startswith('step'):  # once is enough
    again = _cli(*args, f'--workdir={workdir}')
    out, _ = again.communicate(timeout=300)
    assert again.returncode == 0 and 'already finished (3 epochs); nothing to do' in out
    assert 'Epoch ' not in out.replace('(epoch', '')


def test_corrupt_latest_checkpoint_falls_back(fake_mnist_dir, tmp_path, capsys):
  config = _config(fake_mnist_dir)
  workdir = str(tmp_path / 'w')
  first = train.train_and_evaluate(config, workdir)
  steps = checkpoint.Checkpoints(workdir, read_only=True).steps()
  assert steps == [4, 8, 12]
  _corrupt(workdir, 12)
  capsys.readouterr()
  again = train.train_and_evaluate(config, workdir)
  out = capsys.readouterr().out
  assert 'warning: checkpoint 12' in out and 'unreadable' in out
  assert 'Resuming from the checkpoint of epoch 2' in out
  assert _without_times(again.history) == _without_times(first.history)
  assert checkpoint.Checkpoints(workdir, read_only=True).steps() == [4, 8, 12]


def test_all_checkpoints_corrupt_is_one_clear_error(fake_mnist_dir, tmp_path):
  config = _config(fake_mnist_dir, epochs=2)
  workdir = str(tmp_path / 'w')
  train.train_and_evaluate(config, workdir)
  for step in (4, 8):
    _corrupt(workdir, step)
  with pytest.raises(checkpoint.CheckpointError,
                     match=r'none of the checkpoints \[4, 8\].*new --workdir'):
    train.train_and_evaluate(config, workdir)


def test_resume_with_another_config_is_refused(fake_mnist_dir, tmp_path):
  config = _config(fake_mnist_dir, epochs=1)
  workdir = str(tmp_path / 'w')
  train.train_and_evaluate(config, workdir)
  config.model = 'model1'
  config.batch_size = 32
  with pytest.raises(checkpoint.CheckpointError,
                     match=r'another config \(changed: batch_size, model\)'):
    train.train_and_evaluate(config, workdir)
  # Keys that do not change the computation may differ.
  config = _config(fake_mnist_dir, epochs=1)
  config.progress_bar = True
  assert len(train.train_and_evaluate(config, workdir).history) == 1


def test_config_saved_before_a_key_existed_loads_with_its_default(tmp_path):
  saved = small_config('DIR').to_dict()
  del saved['validation_examples']
  saved['augment'].pop('interpolation')
  saved['seed'] = 7
  (tmp_path / 'config.json').write_text(json.dumps(saved))
  config = checkpoint.load_config(str(tmp_path))
  assert config.seed == 7 and config.data_dir == 'DIR'
  assert config.validation_examples == 0
  assert config.augment.interpolation == 'nearest'


def test_checkpoint_from_before_the_ema_field_restores(tmp_path):
  """Until `TrainState.ema` existed, orbax stored the TrainState dataclass itself."""
  import flax.struct  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  from mnist_flax import models, optim  # pylint: disable=g-import-not-at-top
  from configs import v36  # pylint: disable=g-import-not-at-top

  @flax.struct.dataclass
  class OldTrainState:
    step: jax.Array
    params: dict
    batch_stats: dict
    opt_state: tuple
    rng: jax.Array

  tx = optim.create_optimizer(v36.get_config(), steps_per_epoch=1).tx
  state = jit_steps.create_train_state(models.create_model('v36'), tx, jax.random.key(3))
  old = OldTrainState(step=state.step + 5, params=state.params, batch_stats=state.batch_stats,
                      opt_state=state.opt_state, rng=jax.random.key_data(state.rng))
  with ocp.CheckpointManager(tmp_path / 'checkpoints') as manager:
    manager.save(5, args=ocp.args.Composite(state=ocp.args.StandardSave(old),
                                            meta=ocp.args.JsonSave({'epoch': 1, 'history': []})))
  template = jit_steps.create_train_state(models.create_model('v36'), tx, jax.random.key(0))
  restored = checkpoint.Checkpoints(str(tmp_path), read_only=True).restore(5, template)
  assert int(restored.state.step) == 5 and restored.state.ema is None
  np.testing.assert_array_equal(jax.random.key_data(restored.state.rng),
                                jax.random.key_data(state.rng))
  jax.tree.map(np.testing.assert_array_equal, restored.state.params, state.params)


def test_nan_loss_stops_and_saves_nothing(fake_mnist_dir, tmp_path):
  config = _config(fake_mnist_dir, epochs=2)
  config.schedule.name = 'constant'
  config.optimizer.learning_rate = 1e30
  workdir = str(tmp_path / 'w')
  with pytest.raises(train.TrainingDiverged,
                     match=r'NaN or infinite at epoch 1, step \d+ \(seed 0\); .*nothing'):
    train.train_and_evaluate(config, workdir)
  assert checkpoint.Checkpoints(workdir, read_only=True).steps() == []


def test_unwritable_workdir(fake_mnist_dir, tmp_path):
  blocker = tmp_path / 'file'
  blocker.write_text('not a directory')
  with pytest.raises(checkpoint.CheckpointError, match='is not writable'):
    train.train_and_evaluate(_config(fake_mnist_dir), str(blocker / 'w'))


def test_evaluate_matches_training_log(fake_mnist_dir, tmp_path):
  config = _config(fake_mnist_dir, epochs=2)
  workdir = str(tmp_path / 'w')
  result = train.train_and_evaluate(config, workdir)
  logits_path = tmp_path / 'logits.npy'
  proc = _cli('mnist_flax.evaluate', f'--workdir={workdir}',
              f'--logits_out={logits_path}')
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 0, err
  line = json.loads(out.strip().splitlines()[-1])
  assert line['test_accuracy'] == result.history[-1]['test_accuracy']
  assert line['test_loss'] == pytest.approx(result.history[-1]['test_loss'], rel=1e-5)
  assert line['checkpoint_step'] == 8 and line['epoch'] == 2
  logits = np.load(logits_path)
  assert logits.shape == (100, 10)
  labels = data.load_idx_dir(fake_mnist_dir, verify=False).test_labels
  assert 100 * np.mean(logits.argmax(1) == labels) == line['test_accuracy']
  best = evaluate.evaluate_checkpoint(workdir, 'best')[0]
  assert best['test_accuracy'] == max(h['test_accuracy'] for h in result.history)
  bad = _cli('mnist_flax.evaluate', f'--workdir={workdir}', '--checkpoint=99')
  _, err = bad.communicate(timeout=120)
  assert bad.returncode != 0 and "error: no checkpoint '99'" in err
  assert 'Traceback' not in err


def _bomb_png(path, size=100_000):
  """A valid 1x1 PNG whose header then claims size x size pixels."""
  Image.new('L', (1, 1)).save(path)
  raw = bytearray(path.read_bytes())
  ihdr = raw[12:29]  # type + 13 bytes of data
  ihdr[4:12] = struct.pack('>II', size, size)
  raw[12:29] = ihdr
  raw[29:33] = struct.pack('>I', zlib.crc32(bytes(ihdr)))
  path.write_bytes(bytes(raw))


def test_predict_on_drawn_pngs(fake_mnist_dir, tmp_path):
  workdir = str(tmp_path / 'w')
  train.train_and_evaluate(_config(fake_mnist_dir, epochs=3), workdir)
  test = data.load_idx_dir(fake_mnist_dir, verify=False)
  _, logits, _ = evaluate.evaluate_checkpoint(workdir)
  paths = []
  for i in range(4):
    grey = tmp_path / f'grey{i}.png'
    Image.fromarray(test.test_images[i]).save(grey)
    # The same digit as a big black-on-white colour image.
    inverted = Image.fromarray(255 - test.test_images[i]).resize((112, 112),
                                                                Image.NEAREST)
    rgb = tmp_path / f'rgb{i}.png'
    inverted.convert('RGB').save(rgb)
    paths += [str(grey), str(rgb)]
  results = predict.predict(workdir, paths)
  for i in range(4):
    assert results[2 * i][1] == logits[i].argmax()
    assert results[2 * i + 1][1] == logits[i].argmax()
    assert 0.1 <= results[2 * i][2] <= 1.0
  proc = _cli('mnist_flax.predict', f'--workdir={workdir}', paths[0])
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 0, err
  assert out.startswith(f'{paths[0]}: {logits[0].argmax()} (p=')


def test_predict_refuses_non_images_and_bombs(tmp_path):
  text = tmp_path / 'notes.png'
  text.write_text('hello')
  with pytest.raises(predict.ImageError, match='notes.png: not a readable image'):
    predict.load_image(str(text))
  bomb = tmp_path / 'bomb.png'
  _bomb_png(bomb, 10_000)  # under PIL's own limit, over ours
  with pytest.raises(predict.ImageError,
                     match=r'bomb.png: declares too many pixels \(10000x10000 .*refusing'):
    predict.load_image(str(bomb))
  _bomb_png(bomb, 100_000)  # PIL refuses this one itself
  with pytest.raises(predict.ImageError, match='declares too many pixels'):
    predict.load_image(str(bomb))


def test_checkpoint_every_saves_those_epochs_and_the_last_then_resumes(fake_mnist_dir, tmp_path):
  config = small_config(fake_mnist_dir, 3, checkpoint_every=2)
  full = train.train_and_evaluate(config, str(tmp_path / 'w'))
  checkpoints = tmp_path / 'w' / 'checkpoints'
  assert sorted(int(p) for p in os.listdir(checkpoints) if p.isdigit()) == [8, 12]
  shutil.rmtree(checkpoints / '12')  # as if killed during epoch 3
  resumed = train.train_and_evaluate(config, str(tmp_path / 'w'))
  assert _without_times(resumed.history) == _without_times(full.history)
  with pytest.raises(train.ConfigError, match='checkpoint_every must be >= 1'):
    train.train_and_evaluate(small_config(fake_mnist_dir, checkpoint_every=0),
                             str(tmp_path / 'x'))
