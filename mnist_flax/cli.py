"""What every command line shares: absl's app.run with quiet libraries.

A CLI prints its own output and, on a user's mistake, one `error: ...` line.
JAX, orbax and TensorFlow (TFDS) log routine INFO and WARNING lines on stderr
('Unable to initialize backend tpu', 'CheckpointManager init', 'Given directory
is read only', ...); they are dropped unless absl's --verbosity (or -v) is
given, e.g. --verbosity=0 for all of INFO.
"""

from __future__ import annotations

import logging
import os
from typing import Callable

from absl import app
from absl import flags
from absl import logging as absl_logging


def quiet_library_logs() -> None:
  """Keeps library logs to errors, and JAX's to warnings."""
  # absl's handler sits on the root logger: orbax and flax log through absl,
  # JAX through Python loggers that propagate to it.
  absl_logging.set_verbosity(absl_logging.ERROR)
  # JAX warns at WARNING about real problems only (a GPU it cannot use, a
  # broken plugin); its INFO lines stay hidden. A level set with
  # --logger_levels or JAX_LOGGING_LEVEL wins.
  jax_logger = logging.getLogger('jax')
  if jax_logger.level == logging.NOTSET:
    jax_logger.setLevel(logging.WARNING)
  # TensorFlow, imported later and for TFDS only, logs from C++ at INFO when
  # it loads, and reads this then. jaxlib read it already, on import; its C++
  # logs only warnings by default.
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')


def run(main: Callable[[list[str]], None],
        flags_parser: Callable[[list[str]], list[str]] | None = None) -> None:
  """absl's app.run(main): library logs quiet unless --verbosity is given."""
  def quiet_main(argv: list[str]) -> None:
    if not flags.FLAGS['verbosity'].present:
      quiet_library_logs()
    main(argv)

  app.run(quiet_main, flags_parser=flags_parser or app.parse_flags_with_usage)
