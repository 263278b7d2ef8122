"""Command line: python -m mnist_flax.main --config=configs/v36.py --workdir=DIR."""

import re
import sys

from absl import app
from absl import flags
import jax
from ml_collections import config_flags

from mnist_flax import architectures, cli, distill, parallel, sweep, train
from mnist_flax.errors import UserError

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Directory for metrics and TensorBoard logs.')
config_flags.DEFINE_config_file(
    'config', None, 'A config file from configs/; override keys with '
    '--config.KEY=VALUE.', lock_config=True)
flags.DEFINE_multi_string(
    'sweep', [], 'KEY=V1,V2,...: train every combination of the swept values '
    '(repeat the flag for more keys) times every seed, in one program, each run '
    'in WORKDIR/<variant>/seed_S; the numeric keys in mnist_flax/sweep.py\'s '
    'SWEEPABLE.')
flags.DEFINE_integer(
    'cpu_devices', -1, 'Split the host CPU into this many JAX devices (no effect '
    'on GPU/TPU runs): one run splits its batches over them, many runs (seeds, a '
    'sweep) are shared out among them. -1: one per core, the fastest measured '
    '(a run whose batches do not split over all uses as many as split them); '
    '0: JAX\'s default, one.')
flags.DEFINE_bool('distributed', False, 'Multi-host: call '
                  'jax.distributed.initialize() (with the flags below, or the '
                  'cluster\'s environment) and train over every process\'s devices.')
flags.DEFINE_string('coordinator', '', 'host:port of process 0 (--distributed).')
flags.DEFINE_integer('num_processes', 0, 'Number of processes (--distributed).')
flags.DEFINE_integer('process_id', -1, "This process's index (--distributed).")
flags.mark_flags_as_required(['config', 'workdir'])


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parser, with an unknown --config.KEY as a one-line error."""
  try:
    return app.parse_flags_with_usage(argv)
  except (AttributeError, KeyError) as e:
    key = re.search(r"\\?'(\w+)\\?'", str(e))
    hint = re.search(r'Did you mean "(\w+)"', str(e))
    sys.exit(f'error: unknown config key {key.group(1) if key else e!r} in '
             f'{" ".join(a for a in argv if a.startswith("--config."))}'
             f'{f" (did you mean {hint.group(1)!r}?)" if hint else ""}: '
             'the keys are listed in mnist_flax/config.py')


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  config = FLAGS.config
  parallel.use_cpu_devices(FLAGS.cpu_devices)
  try:
    if FLAGS.distributed:
      parallel.initialize_distributed(FLAGS.coordinator, FLAGS.num_processes,
                                      FLAGS.process_id)
    swept = sweep.parse(FLAGS.sweep, config)
    network = architectures.get_network(config.model, config.model_kwargs)
    params = architectures.param_count(network)
    verdict = 'PASS' if params < architectures.PARAM_LIMIT else 'FAIL'
    distilled = distill.describe(config)
    print(f'{config.model}: {params:,} parameters, {verdict} '
          f'(< {architectures.PARAM_LIMIT:,}){f", {distilled}" if distilled else ""}; '
          f'JAX {jax.__version__} on {parallel.describe()}', flush=True)
    train.train_seeds(config, FLAGS.workdir, swept)
  except UserError as e:
    sys.exit(f'error: {e}')


if __name__ == '__main__':
  cli.run(main, flags_parser=parse_flags)
