"""mnist_flax.export: the folded graph equals the Flax model; each format's file,
run in its own runtime, gives our float logits within 1e-5; int8 calibrates on
training images only; a missing extra and bad arguments are refused in one line."""

import json
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

from mnist_flax import architectures as arch
from mnist_flax import checkpoint, data, export, models, train
from mnist_flax.errors import UserError
from tests.conftest import init, small_config, write_fake_mnist

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MEAN, STD = 0.1307, 0.3081


def _with_bn_stats(variables, seed=0):
  """`variables` with BatchNorm scales, biases and running statistics far
  from their initial 1 and 0, so that a wrong fold shows."""
  rng = np.random.default_rng(seed)
  v = jax.tree.map(np.asarray, variables)
  for name, stats in v['batch_stats'].items():
    c = stats['mean'].shape
    v['batch_stats'][name] = {'mean': rng.normal(0, 0.5, c).astype(np.float32),
                              'var': rng.uniform(0.1, 3, c).astype(np.float32)}
    v['params'][name] = {'scale': rng.uniform(0.5, 1.5, c).astype(np.float32),
                         'bias': rng.normal(0, 0.3, c).astype(np.float32)}
  return v


@pytest.mark.parametrize('name', ['v36', 'v36pad_tiny', 'model1', 'v36sep_tiny', 'eva6',
                                  'woolly'])
def test_folded_graph_equals_the_flax_model(name):
  # v36pad_tiny: padded convs (the normalisation is not folded into conv1);
  # model1: GAP before conv_final; v36sep_tiny: depthwise convs, BN after pw;
  # eva6: dropout, and a BatchNorm after GAP; woolly: biased convs, dropout.
  model = models.create_model(name)
  variables = _with_bn_stats(init(model))
  inference = export.fold(arch.get_network(name), variables, MEAN, STD)
  assert not any(isinstance(op, arch.BatchNorm) for op in inference.ops)
  images = np.random.default_rng(1).integers(0, 256, (32, 28, 28), dtype=np.uint8)
  ours = export.reference_runner(model, variables, MEAN, STD)(images)
  folded = jax.jit(lambda x: export.infer(inference, x))(export.to_unit(images))
  np.testing.assert_allclose(folded, ours, atol=1e-5)


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """v36pad_tiny trained for 4 steps on fake data: its workdir, data and the
  float JAX model's test logits."""
  root = tmp_path_factory.mktemp('export')
  write_fake_mnist(root)
  workdir = str(root / 'w')
  train.train_and_evaluate(small_config(root, epochs=1, model='v36pad_tiny'), workdir)
  config, model, restored = checkpoint.load_checkpoint(workdir)
  ds = data.load_for(config)
  variables = jax.device_get(restored.state.eval_variables)
  logits = export.reference_runner(model, variables, MEAN, STD)(ds.test_images)
  return {'workdir': workdir, 'root': root, 'ds': ds, 'logits': logits}


def _load_and_run(fmt, path, images):
  """The file at `path` run in its own runtime, without mnist_flax's code."""
  with open(path, 'rb') as f:
    blob = f.read()
  x = images.astype(np.float32) / 255
  if fmt == 'stablehlo':
    return np.asarray(jax.export.deserialize(bytearray(blob)).call(x))
  if fmt == 'onnx':
    import onnxruntime as ort  # pylint: disable=g-import-not-at-top
    return ort.InferenceSession(blob).run(None, {'pixels': x})[0]
  from ai_edge_litert.interpreter import Interpreter  # pylint: disable=g-import-not-at-top
  interpreter = Interpreter(model_path=path)
  interpreter.allocate_tensors()
  inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
  logits = []
  for image in x:
    interpreter.set_tensor(inp['index'], image[None])
    interpreter.invoke()
    logits.append(interpreter.get_tensor(out['index'])[0])
  return np.asarray(logits)


@pytest.mark.parametrize('fmt', export.FORMATS)
def test_float_export_runs_in_its_runtime_with_our_logits(trained, fmt, tmp_path):
  for module in export.NEEDS.get(fmt, ()):
    pytest.importorskip(module)
  out = str(tmp_path / f'model{export.SUFFIXES[fmt]}')
  result = export.export_checkpoint(trained['workdir'], fmt, out)
  assert result['size_bytes'] == os.path.getsize(out)
  logits = _load_and_run(fmt, out, trained['ds'].test_images)
  np.testing.assert_allclose(logits, trained['logits'], atol=1e-5)
  reference, row = result['rows']
  assert row['differing_predictions'] == 0 and row['max_abs_logit_diff'] <= 1e-5
  assert row['accuracy'] == reference['accuracy']
  assert row['images'] == len(trained['ds'].test_labels) and row['latency_us'] > 0


class _Untouchable:
  """Stands for the test arrays: any use fails the test."""

  def __getattr__(self, name):
    raise AssertionError(f'int8 calibration touched the test images ({name})')

  def __len__(self):
    raise AssertionError('int8 calibration touched the test images (len)')

  def __getitem__(self, index):
    raise AssertionError('int8 calibration touched the test images ([])')

  def __array__(self, *args, **kwargs):
    raise AssertionError('int8 calibration touched the test images (array)')


@pytest.mark.parametrize('fmt', ['litert', 'onnx'])
def test_int8_calibrates_on_training_images_only(trained, fmt, tmp_path):
  for module in export.NEEDS[fmt]:
    pytest.importorskip(module)
  ds = trained['ds']
  train_only = data.Dataset(ds.train_images, ds.train_labels, _Untouchable(),
                            _Untouchable())
  out = str(tmp_path / f'int8{export.SUFFIXES[fmt]}')
  export.export_checkpoint(trained['workdir'], fmt, out, quantize='int8',
                           check=False, ds=train_only)
  logits = export.RUNNERS[fmt](open(out, 'rb').read())(ds.test_images)
  # Quantized logits: close to ours, not equal; predictions nearly all the same.
  assert np.mean(logits.argmax(1) == trained['logits'].argmax(1)) >= 0.95
  assert np.abs(logits - trained['logits']).max() < 0.2 * np.abs(trained['logits']).max()
  if fmt == 'litert':
    from ai_edge_litert.interpreter import Interpreter  # pylint: disable=g-import-not-at-top
    interpreter = Interpreter(model_path=out)
    assert interpreter.get_input_details()[0]['dtype'] == np.int8
    assert interpreter.get_output_details()[0]['dtype'] == np.int8
    scale, zero = interpreter.get_input_details()[0]['quantization']
    assert zero == -128 and scale == pytest.approx(1 / 255, rel=1e-5)


def test_calibration_reads_only_training_images():
  # Image i is filled with i % 256: the calibration set is 100 distinct ones.
  train_images = np.repeat(np.arange(5000) % 256, 784).reshape(5000, 28, 28)
  ds = data.Dataset(train_images.astype(np.uint8), np.zeros(5000), _Untouchable(),
                    _Untouchable())
  images = export.calibration_images(ds, count=100)
  assert images.shape == (100, 28, 28) and images.dtype == np.uint8


def test_c_array_holds_the_tflite_bytes(trained, tmp_path):
  pytest.importorskip('tensorflow')
  pytest.importorskip('ai_edge_litert')
  out = str(tmp_path / 'm.tflite')
  export.export_checkpoint(trained['workdir'], 'litert', out, write_c_array=True,
                           check=False)
  source = open(str(tmp_path / 'm.cc')).read()
  body = source[source.index('{') + 1:source.index('}')]
  blob = bytes(int(b, 16) for b in re.findall(r'0x([0-9a-f]{2})', body))
  assert blob == open(out, 'rb').read()
  assert f'g_model_len = {len(blob)};' in source and 'alignas(16)' in source


@pytest.mark.parametrize('fmt,hidden', [('litert', 'tensorflow'),
                                        ('litert', 'ai_edge_litert'),
                                        ('onnx', 'onnxruntime'),
                                        ('stablehlo', 'flatbuffers')])
def test_missing_extra_names_it(monkeypatch, fmt, hidden):
  monkeypatch.setitem(sys.modules, hidden, None)  # as uninstalled
  with pytest.raises(export.ExportError, match=(
      rf"^--format={fmt} needs {hidden}, in the export extra: "
      r"pip install 'mnist_flax\[export\]'$")):
    export.validate(fmt, 'float32')


def _cli(*args, hide=None):
  """python -m mnist_flax.export ARGS, with the module `hide` uninstalled."""
  code = ('import runpy, sys\n'
          f'sys.modules.update({{m: None for m in {hide or []!r}}})\n'
          "runpy.run_module('mnist_flax.export', run_name='__main__')\n")
  return subprocess.run([sys.executable, '-c', code, *args], capture_output=True,
                        text=True, cwd=REPO, check=False)


def test_bad_arguments_are_refused_in_one_line(trained, tmp_path):
  w, out = trained['workdir'], str(tmp_path / 'm')
  cases = [
      (dict(fmt='keras'), "unknown format 'keras'; choose one of: litert, onnx, stablehlo"),
      (dict(fmt='stablehlo', quantize='int8'),
       '--format=stablehlo is float32 only; int8 is made for litert and onnx'),
      (dict(fmt='onnx', quantize='int4'), "unknown quantize 'int4'; choose one of: float32, int8"),
      (dict(fmt='stablehlo', write_c_array=True),
       '--c_array is for --format=litert (TensorFlow Lite Micro)'),
  ]
  for kwargs, message in cases:
    with pytest.raises(UserError, match=f'^{re.escape(message)}$'):
      export.export_checkpoint(w, out=out, **kwargs)
  with pytest.raises(UserError, match='config.json not found: --workdir must be'):
    export.export_checkpoint(str(tmp_path / 'none'), 'stablehlo', out)
  assert not os.path.exists(out)


def test_cli_errors_are_one_line(trained, tmp_path):
  w, out = f'--workdir={trained["workdir"]}', f'--out={tmp_path / "m"}'
  cases = {
      (w, '--format=keras', out):
          "error: unknown format 'keras'; choose one of: litert, onnx, stablehlo",
      (w, '--format=onnx'): 'error: --out=FILE is required',
  }
  for args, message in cases.items():
    run = _cli(*args)
    assert run.returncode == 1 and run.stderr.strip().splitlines() == [message], args
  run = _cli(w, '--format=litert', out, hide=['tensorflow'])
  assert run.returncode == 1 and run.stderr.strip().splitlines() == [
      "error: --format=litert needs tensorflow, in the export extra: "
      "pip install 'mnist_flax[export]'"]


def test_cli_prints_the_table_and_writes_json(trained, tmp_path):
  pytest.importorskip('onnxruntime')
  out = tmp_path / 'm.onnx'
  run = _cli(f'--workdir={trained["workdir"]}', '--format=onnx', f'--out={out}')
  assert run.returncode == 0, run.stderr
  lines = run.stdout.splitlines()
  assert lines[0] == f'{trained["workdir"]} -> {out} ({out.stat().st_size:,} bytes)'
  assert lines[1].split()[:3] == ['model', 'accuracy', '%']
  assert lines[3].startswith('onnx float32')
  report = json.loads(open(f'{out}.json').read())
  assert report['rows'][1]['differing_predictions'] == 0
  assert report['rows'][1]['size_bytes'] == out.stat().st_size


@pytest.mark.parametrize('fmt', ['stablehlo', 'onnx'])
def test_checkpoint_converted_from_pytorch_exports_as_the_pytorch_net(fmt, tmp_path):
  torch = pytest.importorskip('torch')
  for module in export.NEEDS.get(fmt, ()):
    pytest.importorskip(module)
  from mnist_flax import convert, torch_interop  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  net = torch_interop.torch_model('v36').eval()
  with torch.no_grad():  # running statistics far from 0 and 1
    for module in net.modules():
      if isinstance(module, torch.nn.BatchNorm2d):
        module.running_mean.normal_(0, 0.5)
        module.running_var.uniform_(0.1, 3)
        module.weight.uniform_(0.5, 1.5)
        module.bias.normal_(0, 0.3)
  torch.save(net.state_dict(), tmp_path / 'net.pt')
  workdir = str(tmp_path / 'w')
  convert.from_torch(str(tmp_path / 'net.pt'), 'v36', workdir)
  out = str(tmp_path / f'm{export.SUFFIXES[fmt]}')
  export.export_checkpoint(workdir, fmt, out, check=False)
  images = np.random.default_rng(2).integers(0, 256, (16, 28, 28), dtype=np.uint8)
  logits = _load_and_run(fmt, out, images)
  x = (torch.from_numpy(images).float() / 255 - MEAN) / STD
  with torch.no_grad():
    log_probs = net(x[:, None]).numpy()  # the seeds' forward ends in log_softmax
  np.testing.assert_allclose(jax.nn.log_softmax(logits), log_probs, atol=1e-5)


def test_layers_export_cannot_write_are_refused_in_one_line():
  """An imported network's Linear layer or strided convolution: a one-line
  ExportError naming the layer, not a traceback from a writer."""
  for network in ((arch.Conv('c', 4, stride=2), arch.GlobalAvgPool()),
                  (arch.GlobalAvgPool(), arch.Linear('fc', 10))):
    with pytest.raises(export.ExportError, match='export does not handle'):
      export.fold(network, {'params': {}, 'batch_stats': {}}, MEAN, STD)
