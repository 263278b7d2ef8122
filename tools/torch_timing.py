"""PyTorch's side of the GPU measurement: a config's recipe in plain PyTorch
(`compare.train_torch`: data and augmentation on the device), timed per epoch.

  python tools/torch_timing.py CONFIG DATA_DIR DEVICE [--compile=MODE]
      [--channels_last] [--num_epochs=N] [--train_examples=N] > torch.json

Prints one JSON object: the device, versions, per-epoch wall times (the first
includes torch.compile's compilation), per-epoch test accuracy, final-3 average.
"""

from __future__ import annotations

import argparse
import json
import runpy
import statistics
import time

from mnist_flax import compare, data, report


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument('config')
  parser.add_argument('data_dir')
  parser.add_argument('device')
  parser.add_argument('--compile', default='')
  parser.add_argument('--channels_last', action='store_true')
  parser.add_argument('--num_epochs', type=int, default=0)
  parser.add_argument('--train_examples', type=int, default=0)
  args = parser.parse_args()
  config = runpy.run_path(args.config)['get_config']()
  config.data_dir, config.verify_checksums = args.data_dir, False
  config.train_examples = args.train_examples
  if args.num_epochs:
    config.num_epochs = args.num_epochs
  import torch  # pylint: disable=g-import-not-at-top
  ds = data.load_for(config)
  marks = [time.perf_counter()]

  def log(_: str) -> None:  # called once an epoch, after its evaluation
    if args.device.startswith('cuda'):
      torch.cuda.synchronize()
    marks.append(time.perf_counter())

  history = compare.train_torch(config, ds, args.device, log=log,
                                compile_mode=args.compile,
                                channels_last=args.channels_last)
  epoch_s = [b - a for a, b in zip(marks, marks[1:])]
  later = statistics.median(epoch_s[1:]) if len(epoch_s) > 1 else 0.0
  analysis = report.final_analysis(history, config.target_accuracy)
  print(json.dumps({
      'device': (torch.cuda.get_device_name() if args.device.startswith('cuda')
                 else args.device),
      'torch': torch.__version__, 'compile': args.compile,
      'channels_last': args.channels_last, 'model': config.model,
      'batch_size': config.batch_size, 'epochs': config.num_epochs,
      'epoch_s': epoch_s, 'total_s': sum(epoch_s),
      'compile_s': epoch_s[0] - later, 'train_s': sum(epoch_s) - (epoch_s[0] - later),
      'test_accuracy': [h['test_accuracy'] for h in history],
      'final3_average': analysis['final3_average'],
      'best_accuracy': analysis['best_accuracy'],
  }, indent=1))


if __name__ == '__main__':
  main()
