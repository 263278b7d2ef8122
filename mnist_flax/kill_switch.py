"""Test-only: a training process that kills itself (SIGKILL) at a chosen moment.

`MNIST_FLAX_KILL_AT=step:N` stops it once step N is dispatched; `save:N` stops
it inside the save of checkpoint N, after orbax wrote its files to the
temporary directory and before the rename that completes it. The crash tests
set it; unset (always, outside them), nothing changes.
"""

from __future__ import annotations

import os
import signal

from orbax.checkpoint.path import atomicity

ENV = 'MNIST_FLAX_KILL_AT'


def _target() -> tuple[str, int] | None:
  """('step' or 'save', N) from the environment; None when unset."""
  value = os.environ.get(ENV, '')
  if not value:
    return None
  point, _, step = value.partition(':')
  return point, int(step)


def _kill_if(point: str, first: int, last: int) -> None:
  """Kills this process if the target is `point` at a step in [first, last]."""
  target = _target()
  if target and target[0] == point and first <= target[1] <= last:
    os.kill(os.getpid(), signal.SIGKILL)


def after_steps(first: int, last: int) -> None:
  """Called once steps `first`..`last` (1-based) have been dispatched; the
  first call whose range holds the target kills."""
  _kill_if('step', first, last)


class _KilledBeforeRename(atomicity.AtomicRenameTemporaryPath):
  """orbax's default on local disks, with the kill before the final rename."""

  async def finalize(self):
    name = self._final_path.name
    if name.isdigit():  # the step's directory, not one of its items
      _kill_if('save', int(name), int(name))
    await super().finalize()


def temporary_path_class() -> type[atomicity.AtomicRenameTemporaryPath] | None:
  """The orbax temporary-path class for CheckpointManagerOptions: orbax's own
  (None) unless a save is to be killed."""
  target = _target()
  return _KilledBeforeRename if target and target[0] == 'save' else None
