"""python -m mnist_flax.export --workdir=DIR --format=litert|onnx|stablehlo --out=FILE.

Writes a checkpoint as a stand-alone inference model and runs the file back in
its own runtime over the test set:
- litert (.tflite): jax2tf to a SavedModel, then TensorFlow's TFLiteConverter
  (the path the LiteRT docs give for JAX); float32, or full-integer int8
  (--quantize=int8: int8 weights, activations, input and output, calibrated on
  training images); --c_array also writes the model as a C array (FILE.cc) for
  TensorFlow Lite Micro. Run back with ai-edge-litert's interpreter.
- onnx (.onnx): the graph written with `onnx.helper` from the same folded layers,
  opset ONNX_OPSET; --quantize=int8 adds onnxruntime's static QDQ quantization.
  Run back with onnxruntime.
- stablehlo: `jax.export`, serialized; `jax.export.deserialize(...).call(x)`
  runs it without this package.

Every exported model takes raw pixels and returns logits (N, 10), not
probabilities. Float models: float32 (N, 28, 28), pixel / 255, in [0, 1]
(LiteRT's: N = 1, a static shape as TensorFlow Lite Micro needs). The int8
LiteRT model: int8 (1, 28, 28), pixel - 128 (scale 1/255, zero point -128, as
the file's input details say), and int8 logits (scale and zero point in its
output details). The graph normalises ((x - mean) / std) itself, and each
BatchNorm is folded into the convolution before it.

The float JAX model (the Flax network, BatchNorm unfolded) is the reference:
the check prints its accuracy and the export's, how many predictions differ
from it, the largest logit difference, the file size and the one-image latency,
as a table and as JSON (--report, default FILE.json).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import tempfile
import time
from typing import Any, Callable, Sequence, Union

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from mnist_flax import architectures as arch
from mnist_flax import checkpoint, cli, data, jit_steps, models
from mnist_flax.errors import UserError, unknown

FORMATS = ('litert', 'onnx', 'stablehlo')
QUANTIZE = ('float32', 'int8')
SUFFIXES = {'litert': '.tflite', 'onnx': '.onnx', 'stablehlo': '.stablehlo'}
# 17: ONNX 1.12+ and onnxruntime 1.12+ read it; every op used here (Conv,
# MaxPool, GlobalAveragePool, Relu, Mul, Add, Sub, Div, Reshape, Flatten) has
# had its current form since.
ONNX_OPSET = 17
# Training images the int8 converters calibrate on (seeded, without test images).
CALIBRATION_IMAGES = 1000
INSTALL_HINT = "pip install 'mnist_flax[export]'"
# The packages each format needs beyond the core (jax.export serializes with
# flatbuffers, which JAX does not install).
NEEDS = {'litert': ('tensorflow', 'ai_edge_litert'), 'onnx': ('onnx', 'onnxruntime'),
         'stablehlo': ('flatbuffers',)}


class ExportError(UserError):
  """A missing extra or an export that cannot be made."""


def require(fmt: str) -> None:
  """Imports what `fmt` needs; one-line ExportError naming the extra if absent."""
  for module in NEEDS.get(fmt, ()):
    try:
      __import__(module)
    except ImportError:
      raise ExportError(f'--format={fmt} needs {module}, in the export extra: '
                        f'{INSTALL_HINT}') from None


# The inference graph ---------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FoldedConv:
  """A convolution with the BatchNorm after it (if any) folded in."""

  kernel: np.ndarray  # (k, k, C_in / groups, C_out), Flax's HWIO
  bias: np.ndarray    # (C_out,)
  padding: int
  dilation: int
  groups: int


@dataclasses.dataclass(frozen=True)
class Affine:
  """A BatchNorm that follows no convolution: x * scale + shift per channel."""

  scale: np.ndarray
  shift: np.ndarray


Op = Union[FoldedConv, Affine, arch.ReLU, arch.MaxPool, arch.GlobalAvgPool]


@dataclasses.dataclass(frozen=True)
class Inference:
  """A network ready to export: folded ops and the input normalisation."""

  ops: tuple[Op, ...]
  mean: float
  std: float


def fold(network: arch.Network, variables: dict[str, Any], mean: float,
         std: float) -> Inference:
  """The network with each BatchNorm (eval mode, running statistics, its
  spec's eps) folded into the convolution before it, and dropout dropped;
  computed in float64, stored as float32."""
  params, stats = variables['params'], variables['batch_stats']
  ops: list[Any] = []
  channels = arch.INPUT_SHAPE[2]
  for layer in network:
    if isinstance(layer, arch.Linear) or (isinstance(layer, arch.CONVS)
                                          and layer.stride != 1):
      raise ExportError(f'export does not handle {layer} yet (a Linear layer or a '
                        'strided convolution); export a network without one')
    if isinstance(layer, arch.Dropout):
      continue  # the identity in inference
    if isinstance(layer, arch.CONVS):
      p = params[layer.name]
      kernel = np.asarray(p['kernel'], np.float64)
      out = kernel.shape[-1]
      bias = np.asarray(p['bias'], np.float64) if layer.bias else np.zeros(out)
      ops.append(FoldedConv(kernel, bias, layer.padding, layer.dilation,
                            layer.groups(channels)))
      channels = out
    elif isinstance(layer, arch.BatchNorm):
      var = np.asarray(stats[layer.name]['var'], np.float64)
      # affine=False: a scale of 1 and a bias of 0.
      p = params.get(layer.name, {'scale': np.ones_like(var), 'bias': np.zeros_like(var)})
      s = np.asarray(p['scale'], np.float64) / np.sqrt(var + layer.eps)
      shift = (np.asarray(p['bias'], np.float64)
               - np.asarray(stats[layer.name]['mean'], np.float64) * s)
      if ops and isinstance(ops[-1], FoldedConv):
        conv = ops.pop()
        ops.append(dataclasses.replace(conv, kernel=conv.kernel * s,
                                       bias=conv.bias * s + shift))
      else:
        ops.append(Affine(s, shift))
    else:
      ops.append(layer)
  as32 = lambda a: np.asarray(a, np.float32)
  ops = [dataclasses.replace(op, kernel=as32(op.kernel), bias=as32(op.bias))
         if isinstance(op, FoldedConv) else
         Affine(as32(op.scale), as32(op.shift)) if isinstance(op, Affine) else op
         for op in ops]
  return Inference(tuple(ops), float(mean), float(std))


def infer(inference: Inference, images: jax.Array) -> jax.Array:
  """Logits (N, 10) of float (N, 28, 28) images in [0, 1]: the exported graph.

  Pure jnp/lax on constants, so jax2tf and jax.export capture all of it.
  """
  x = ((images - inference.mean) / inference.std)[..., None]
  for op in inference.ops:
    if isinstance(op, FoldedConv):
      p = op.padding
      x = jax.lax.conv_general_dilated(
          x, op.kernel, (1, 1), ((p, p), (p, p)), rhs_dilation=(op.dilation,) * 2,
          dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=op.groups,
          precision=jax.lax.Precision.HIGHEST) + op.bias
    elif isinstance(op, Affine):
      x = x * op.scale + op.shift
    elif isinstance(op, arch.ReLU):
      x = jnp.maximum(x, 0.0)
    elif isinstance(op, arch.MaxPool):
      # reduce_window, not models.max_pool's reshape: it becomes one pooling op
      # in TFLite (MAX_POOL_2D); VALID floors odd sizes as the reshape does.
      w = op.window
      x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, w, w, 1),
                                (1, w, w, 1), 'VALID')
    elif isinstance(op, arch.GlobalAvgPool):
      x = x.mean(axis=(1, 2), keepdims=True)
    else:
      raise TypeError(f'unknown op {op!r}')
  return x.reshape(x.shape[0], -1)


def calibration_images(ds: data.Dataset, count: int = CALIBRATION_IMAGES,
                       seed: int = 0) -> np.ndarray:
  """`count` training images (uint8), drawn without replacement: the int8
  calibration set. Reads ds.train_images only, never the test images."""
  train = ds.train_images
  pick = np.random.default_rng(seed).choice(len(train), min(count, len(train)),
                                            replace=False)
  return np.asarray(train[np.sort(pick)])


def to_unit(images: np.ndarray) -> np.ndarray:
  """uint8 pixels -> float32 in [0, 1], the float models' input."""
  return np.asarray(images, np.float32) / np.float32(255)


# Writers: Inference -> bytes --------------------------------------------------


def stablehlo_bytes(inference: Inference) -> bytes:
  """jax.export of `infer`, batch size symbolic, for CPU, CUDA and TPU."""
  batch, = jax.export.symbolic_shape('n')
  exported = jax.export.export(
      jax.jit(lambda x: infer(inference, x)), platforms=('cpu', 'cuda', 'tpu'))(
          jax.ShapeDtypeStruct((batch, 28, 28), jnp.float32))
  return bytes(exported.serialize())


def litert_bytes(inference: Inference, quantize: str = 'float32',
                 calibration: np.ndarray | None = None) -> bytes:
  """A .tflite flatbuffer, batch 1: jax2tf -> SavedModel -> TFLiteConverter.

  int8: full-integer post-training quantization calibrated on `calibration`
  (uint8 training images); int8 input and output.
  """
  require('litert')
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from jax.experimental import jax2tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], 'GPU')  # keep TF off the accelerator JAX uses
  module = tf.Module()
  module.infer = tf.function(
      jax2tf.convert(lambda x: infer(inference, x), with_gradient=False),
      autograph=False,
      input_signature=[tf.TensorSpec((1, 28, 28), tf.float32, name='pixels')])
  with tempfile.TemporaryDirectory() as saved:
    tf.saved_model.save(module, saved,
                        signatures=module.infer.get_concrete_function())
    converter = tf.lite.TFLiteConverter.from_saved_model(saved)
    if quantize == 'int8':
      if calibration is None:
        raise ExportError('int8 needs calibration images')
      units = to_unit(calibration)
      converter.optimizations = [tf.lite.Optimize.DEFAULT]
      converter.representative_dataset = lambda: ([u[None]] for u in units)
      converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
      converter.inference_input_type = tf.int8
      converter.inference_output_type = tf.int8
    return bytes(converter.convert())


def onnx_bytes(inference: Inference, quantize: str = 'float32',
               calibration: np.ndarray | None = None) -> bytes:
  """An ONNX model (opset ONNX_OPSET), batch size free, NCHW inside.

  int8: onnxruntime's static quantization, QDQ format, per-channel int8
  weights and int8 activations calibrated on `calibration`; float in and out.
  """
  require('onnx')
  import onnx  # pylint: disable=g-import-not-at-top
  from onnx import helper, numpy_helper  # pylint: disable=g-import-not-at-top
  nodes, inits = [], []

  def const(name: str, value) -> str:
    inits.append(numpy_helper.from_array(np.asarray(value), name))
    return name

  def node(kind: str, inputs: list[str], **attrs) -> str:
    out = f't{len(nodes)}'
    nodes.append(helper.make_node(kind, inputs, [out], name=f'{kind}{len(nodes)}',
                                  **attrs))
    return out

  x = node('Reshape', ['pixels', const('shape_nchw', np.array([-1, 1, 28, 28]))])
  x = node('Div', [node('Sub', [x, const('mean', np.float32(inference.mean))]),
                   const('std', np.float32(inference.std))])
  for i, op in enumerate(inference.ops):
    if isinstance(op, FoldedConv):
      k, p, d = op.kernel.shape[0], op.padding, op.dilation
      x = node('Conv', [x, const(f'w{i}', op.kernel.transpose(3, 2, 0, 1)),
                        const(f'b{i}', op.bias)],
               kernel_shape=[k, k], pads=[p] * 4, dilations=[d, d], group=op.groups)
    elif isinstance(op, Affine):
      x = node('Add', [node('Mul', [x, const(f's{i}', op.scale.reshape(1, -1, 1, 1))]),
                       const(f'c{i}', op.shift.reshape(1, -1, 1, 1))])
    elif isinstance(op, arch.ReLU):
      x = node('Relu', [x])
    elif isinstance(op, arch.MaxPool):
      x = node('MaxPool', [x], kernel_shape=[op.window] * 2, strides=[op.window] * 2)
    elif isinstance(op, arch.GlobalAvgPool):
      x = node('GlobalAveragePool', [x])
    else:
      raise TypeError(f'unknown op {op!r}')
  nodes.append(helper.make_node('Flatten', [x], ['logits'], axis=1))
  graph = helper.make_graph(
      nodes, 'mnist_flax', [helper.make_tensor_value_info(
          'pixels', onnx.TensorProto.FLOAT, ['n', 28, 28])],
      [helper.make_tensor_value_info('logits', onnx.TensorProto.FLOAT, ['n', 10])],
      inits)
  model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', ONNX_OPSET)],
                            producer_name='mnist_flax')
  onnx.checker.check_model(model, full_check=True)
  if quantize == 'int8':
    if calibration is None:
      raise ExportError('int8 needs calibration images')
    return _onnx_qdq(model.SerializeToString(), calibration)
  return model.SerializeToString()


def _onnx_qdq(float_model: bytes, calibration: np.ndarray) -> bytes:
  from onnxruntime import quantization as q  # pylint: disable=g-import-not-at-top

  class Reader(q.CalibrationDataReader):
    def __init__(self):
      self.batches = iter(to_unit(calibration[i:i + 100])
                          for i in range(0, len(calibration), 100))

    def get_next(self):
      batch = next(self.batches, None)
      return None if batch is None else {'pixels': batch}

  with tempfile.TemporaryDirectory() as d:
    src, dst = os.path.join(d, 'float.onnx'), os.path.join(d, 'int8.onnx')
    with open(src, 'wb') as f:
      f.write(float_model)
    q.quantize_static(src, dst, Reader(), quant_format=q.QuantFormat.QDQ,
                      per_channel=True, activation_type=q.QuantType.QInt8,
                      weight_type=q.QuantType.QInt8)
    with open(dst, 'rb') as f:
      return f.read()


def export_bytes(inference: Inference, fmt: str, quantize: str = 'float32',
                 calibration: np.ndarray | None = None) -> bytes:
  """The model file's bytes in `fmt` (one of FORMATS)."""
  validate(fmt, quantize)
  if fmt == 'stablehlo':
    return stablehlo_bytes(inference)
  if fmt == 'litert':
    return litert_bytes(inference, quantize, calibration)
  return onnx_bytes(inference, quantize, calibration)


def c_array(model: bytes, name: str = 'g_model') -> str:
  """The model as C source for TensorFlow Lite Micro (as `xxd -i` writes it,
  16-byte aligned, which TFLM's flatbuffer reads need)."""
  rows = [', '.join(f'0x{b:02x}' for b in model[i:i + 12])
          for i in range(0, len(model), 12)]
  body = ',\n  '.join(rows)
  return (f'// mnist_flax.export: a TensorFlow Lite model, {len(model)} bytes.\n'
          f'alignas(16) const unsigned char {name}[] = {{\n  {body}\n}};\n'
          f'const unsigned int {name}_len = {len(model)};\n')


def validate(fmt: str, quantize: str) -> None:
  """One-line errors for an unknown format or quantization, or a pair we do
  not make."""
  if fmt not in FORMATS:
    raise unknown('format', fmt, FORMATS)
  if quantize not in QUANTIZE:
    raise unknown('quantize', quantize, QUANTIZE)
  if fmt == 'stablehlo' and quantize != 'float32':
    raise ExportError('--format=stablehlo is float32 only; int8 is made for '
                      'litert and onnx')
  require(fmt)


# Runtimes: file bytes -> a function of uint8 images -> float logits ------------


def litert_runner(model: bytes) -> Callable[[np.ndarray], np.ndarray]:
  """ai-edge-litert's interpreter (one thread), one image per invoke;
  int8 inputs and outputs quantized and dequantized with the file's own
  scale and zero point."""
  from ai_edge_litert.interpreter import Interpreter  # pylint: disable=g-import-not-at-top
  interpreter = Interpreter(model_content=model, num_threads=1)
  interpreter.allocate_tensors()
  inp, = interpreter.get_input_details()
  out, = interpreter.get_output_details()
  in_scale, in_zero = inp['quantization']
  out_scale, out_zero = out['quantization']

  def run(images: np.ndarray) -> np.ndarray:
    x = to_unit(images)
    if inp['dtype'] == np.int8:
      x = np.clip(np.round(x / in_scale) + in_zero, -128, 127).astype(np.int8)
    logits = []
    for image in x:
      interpreter.set_tensor(inp['index'], image[None])
      interpreter.invoke()
      logits.append(interpreter.get_tensor(out['index'])[0])
    y = np.asarray(logits)
    if out['dtype'] == np.int8:
      y = (y.astype(np.float32) - out_zero) * out_scale
    return y

  return run


def onnx_runner(model: bytes) -> Callable[[np.ndarray], np.ndarray]:
  """onnxruntime on the CPU, one thread."""
  import onnxruntime as ort  # pylint: disable=g-import-not-at-top
  options = ort.SessionOptions()
  options.intra_op_num_threads = options.inter_op_num_threads = 1
  session = ort.InferenceSession(model, options, providers=['CPUExecutionProvider'])
  return lambda images: session.run(['logits'], {'pixels': to_unit(images)})[0]


def stablehlo_runner(model: bytes) -> Callable[[np.ndarray], np.ndarray]:
  """jax.export.deserialize: no model code of ours involved."""
  call = jax.jit(jax.export.deserialize(bytearray(model)).call)
  return lambda images: np.asarray(call(to_unit(images)))


RUNNERS = {'litert': litert_runner, 'onnx': onnx_runner, 'stablehlo': stablehlo_runner}


def batched(run: Callable[[np.ndarray], np.ndarray], images: np.ndarray,
            size: int = 1000) -> np.ndarray:
  """`run` over `images` in batches of `size` (one compile for JAX)."""
  return np.concatenate([run(images[i:i + size]) for i in range(0, len(images), size)])


def latency_us(run: Callable[[np.ndarray], np.ndarray], image: np.ndarray,
               repeats: int = 200) -> float:
  """Median wall time of `run` on one (1, 28, 28) image, in microseconds,
  after warm-up calls (compilation, allocation)."""
  for _ in range(10):
    run(image)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    run(image)
    times.append(time.perf_counter() - start)
  return float(np.median(times) * 1e6)


def reference_runner(model: models.Net, variables: dict[str, Any], mean: float,
                     std: float) -> Callable[[np.ndarray], np.ndarray]:
  """The float JAX model, as evaluate runs it: the Flax network, BatchNorm
  unfolded, jit_steps.normalize on the uint8 images."""
  apply = jax.jit(lambda x: model.apply(variables, jit_steps.normalize(x, mean, std),
                                        train=False))
  return lambda images: np.asarray(apply(images))


def measure(name: str, run: Callable[[np.ndarray], np.ndarray], images: np.ndarray,
            labels: np.ndarray, reference: np.ndarray | None = None,
            size_bytes: int | None = None) -> dict[str, Any]:
  """Accuracy on `images`, predictions differing from `reference` logits and
  the largest logit difference, size and one-image latency."""
  logits = batched(run, images)
  row = {'model': name, 'accuracy': float(100 * np.mean(logits.argmax(1) == labels)),
         'images': len(labels)}
  if reference is not None:
    row['differing_predictions'] = int(np.sum(logits.argmax(1) != reference.argmax(1)))
    row['max_abs_logit_diff'] = float(np.abs(logits - reference).max())
  row['size_bytes'] = size_bytes
  row['latency_us'] = latency_us(run, images[:1])
  return row


def table(rows: Sequence[dict[str, Any]]) -> str:
  """The rows as a plain-text table."""
  head = ('model', 'accuracy %', 'differ', 'max |dlogit|', 'bytes', 'latency us')
  lines = [head]
  for r in rows:
    lines.append((r['model'], f"{r['accuracy']:.2f}",
                  str(r.get('differing_predictions', '-')),
                  f"{r['max_abs_logit_diff']:.2e}" if 'max_abs_logit_diff' in r else '-',
                  f"{r['size_bytes']:,}" if r.get('size_bytes') else '-',
                  f"{r['latency_us']:.0f}"))
  widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
  return '\n'.join('  '.join(c.ljust(w) if i == 0 else c.rjust(w)
                             for i, (c, w) in enumerate(zip(line, widths)))
                   for line in lines)


# The command ------------------------------------------------------------------


def export_checkpoint(workdir: str, fmt: str, out: str, which: str = 'latest',
                      quantize: str = 'float32', write_c_array: bool = False,
                      data_dir: str | None = None, check: bool = True,
                      ds: data.Dataset | None = None) -> dict[str, Any]:
  """Writes a checkpoint's export to `out` (and `out`'s .cc with
  `write_c_array`); with `check`, runs it back over the test set.

  Returns {'out', 'size_bytes', 'rows'} (rows: the reference's and the
  export's, empty without `check`). `ds`: the data, else the run's.
  """
  validate(fmt, quantize)
  if write_c_array and fmt != 'litert':
    raise ExportError('--c_array is for --format=litert (TensorFlow Lite Micro)')
  config, model, restored = checkpoint.load_checkpoint(workdir, which)
  if data_dir is not None:
    config.data_dir = data_dir
  variables = jax.device_get(restored.state.eval_variables)
  inference = fold(arch.get_network(config.model), variables, config.mean, config.std)
  if ds is None and (check or quantize == 'int8'):
    ds = data.load_for(config)
  calibration = calibration_images(ds) if quantize == 'int8' else None
  blob = export_bytes(inference, fmt, quantize, calibration)
  with open(out, 'wb') as f:
    f.write(blob)
  if write_c_array:
    with open(os.path.splitext(out)[0] + '.cc', 'w') as f:
      f.write(c_array(blob))
  result = {'out': out, 'format': fmt, 'quantize': quantize,
            'model': config.model, 'checkpoint_step': restored.step,
            'size_bytes': len(blob), 'rows': []}
  if check:
    ref_run = reference_runner(model, variables, config.mean, config.std)
    reference = batched(ref_run, ds.test_images)
    result['rows'] = [
        measure('jax float32 (reference)', ref_run, ds.test_images, ds.test_labels),
        measure(f'{fmt} {quantize}', RUNNERS[fmt](blob), ds.test_images,
                ds.test_labels, reference, len(blob))]
  return result


def _define_flags() -> None:
  checkpoint.define_flags()
  flags.DEFINE_string('format', None, f'One of: {", ".join(FORMATS)}.')
  flags.DEFINE_string('quantize', 'float32', f'One of: {", ".join(QUANTIZE)} '
                      '(int8: litert and onnx).')
  flags.DEFINE_string('out', None, 'The model file to write.')
  flags.DEFINE_bool('c_array', False, 'litert: also write OUT with .cc, the '
                    'model as a C array for TensorFlow Lite Micro.')
  flags.DEFINE_bool('check', True, 'Run the file back over the test set and '
                    'print the table.')
  flags.DEFINE_string('report', None, 'The JSON report (default: OUT.json).')
  flags.DEFINE_string('data_dir', None, "Override the run's data_dir.")


def main(argv):
  f = flags.FLAGS
  try:
    if len(argv) > 1:
      raise UserError(f'unexpected arguments {argv[1:]}: export takes flags only')
    if not f.format:
      raise UserError(f'--format is required: one of {", ".join(FORMATS)}')
    if not f.out:
      raise UserError('--out=FILE is required')
    result = export_checkpoint(f.workdir, f.format, f.out, f.checkpoint, f.quantize,
                               f.c_array, f.data_dir, f.check)
  except (UserError, OSError) as e:
    sys.exit(f'error: {e}')
  print(f"{f.workdir} -> {f.out} ({result['size_bytes']:,} bytes)")
  if result['rows']:
    print(table(result['rows']))
    with open(f.report or f.out + '.json', 'w') as out:
      json.dump(result, out, indent=2)


if __name__ == '__main__':
  _define_flags()
  cli.run(main)
