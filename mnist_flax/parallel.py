"""Every device of every process, with `jax.sharding`: one run's batches split
over the devices, or many runs shared out among them.

One run: a `Mesh` with a 'data' axis over the devices (of all processes after
`jax.distributed.initialize`). Each batch is split along that axis; the state
and the uint8 dataset are replicated. Because BatchNorm's statistics are
reductions over the whole (global) batch inside one jitted program, XLA inserts
the all-reduces and the numbers do not depend on the device count.

Many runs (K seeds, a sweep): a 'runs' axis over all devices. Each device
trains its share of the runs, whole batches, on its own copy of the dataset,
with no communication between runs (`epoch_loop.make_steps`).
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

import jax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np

from mnist_flax.errors import ConfigError, UserError

AXIS = 'data'
RUNS = 'runs'


def cpu_cores() -> int:
  """The cores this process may run on (a container's, not the host's)."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not on Linux
    return os.cpu_count() or 1


# Set by use_cpu_devices(-1): a run whose batches do not split over every
# device uses as many as split them, instead of stopping.
_fit_batches = False


def use_cpu_devices(count: int) -> None:
  """Splits the host CPU into `count` JAX devices; -1: one per core (the
  fastest setting measured, docs/performance.md). Must run before JAX starts.
  Runs on a GPU or TPU train on those devices whatever this says."""
  global _fit_batches
  _fit_batches = count < 0
  if count < 0:
    count = cpu_cores()
  if count > 0:
    jax.config.update('jax_num_cpu_devices', count)


def initialize_distributed(coordinator: str, num_processes: int,
                           process_id: int, timeout_s: int = 60) -> None:
  """Joins a multi-process run (one call per process, before any computation).

  Arguments left empty/negative are taken from the environment (Cloud TPU, SLURM,
  ...), as `jax.distributed.initialize` does. On CPU, collectives go over gloo.
  A process that cannot reach the coordinator within `timeout_s` stops with a
  one-line error; JAX itself would abort the process after minutes.
  """
  if coordinator and process_id > 0:
    wait_for_coordinator(coordinator, timeout_s)
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  try:
    jax.distributed.initialize(coordinator or None,
                               num_processes if num_processes > 0 else None,
                               process_id if process_id >= 0 else None,
                               initialization_timeout=timeout_s)
  except (RuntimeError, ValueError) as e:
    raise UserError(
        f'could not join the distributed run ({str(e).strip()[:300]}); give '
        '--coordinator=HOST:PORT of process 0, --num_processes and --process_id, '
        'or run where the cluster sets them') from None


def wait_for_coordinator(address: str, timeout_s: float) -> None:
  """Returns once HOST:PORT accepts connections; a UserError after timeout_s."""
  host, _, port = address.rpartition(':')
  if not host or not port.isdigit():
    raise UserError(f'--coordinator={address!r} is not HOST:PORT')
  deadline = time.monotonic() + timeout_s
  while True:
    try:
      socket.create_connection((host, int(port)), timeout=2).close()
      return
    except OSError as e:
      if time.monotonic() > deadline:
        raise UserError(
            f'no coordinator at {address} after {timeout_s:.0f} s ({e.strerror or e}); '
            'start process 0 first, and check --coordinator (host:port of '
            'process 0, reachable from here)') from None
      time.sleep(0.5)


def create_mesh() -> Mesh:
  """A 1-D 'data' mesh over every device of every process."""
  return Mesh(np.array(jax.devices()), (AXIS,))


def data_mesh(sizes: set[int]) -> Mesh:
  """One run's mesh, for batches of `sizes`: every device, or after
  `use_cpu_devices(-1)` on one process as many as split every batch evenly.
  A device count asked for that does not split them is a one-line error."""
  devices = jax.devices()
  if _fit_batches and jax.process_count() == 1:
    n = max(n for n in range(1, len(devices) + 1) if all(s % n == 0 for s in sizes))
    devices = devices[:n]
  mesh = Mesh(np.array(devices), (AXIS,))
  check_batch_sizes(sizes, mesh)
  return mesh


def runs_mesh() -> Mesh:
  """A 1-D 'runs' mesh over every device of every process."""
  return Mesh(np.array(jax.devices()), (RUNS,))


def runs_sharded(mesh: Mesh) -> NamedSharding:
  """Leading (run) axis split across a `runs_mesh`."""
  return NamedSharding(mesh, P(RUNS))


def padded_runs(runs: int, devices: int) -> int:
  """`runs` rounded up to a multiple of `devices`: every device trains as many.
  The extra runs copy the last one, train beside it and are discarded, so K
  runs on D devices take the time of ceil(K / D) runs on one."""
  return -(-runs // devices) * devices


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split across the mesh."""
  return NamedSharding(mesh, P(AXIS))


def check_batch_sizes(sizes: set[int], mesh: Mesh) -> None:
  """Every batch must split evenly: a clear error naming the fix otherwise."""
  devices = mesh.size
  bad = sorted(s for s in sizes if s % devices)
  if bad:
    raise ConfigError(
        f'batch sizes {bad} (the last batch of an epoch included) do not split '
        f'across {devices} devices; choose a batch_size (and train_examples) '
        f'whose batches are multiples of {devices}, or train on fewer devices '
        '(--cpu_devices, CUDA_VISIBLE_DEVICES)')


def eval_batches(images: np.ndarray, labels: np.ndarray, batch_size: int,
                 devices: int) -> tuple[np.ndarray, np.ndarray]:
  """The evaluation set as (num_batches, size, ...) arrays, evaluated as one
  program: as many batches as `batch_size` needs, all of one size, a multiple of
  `devices`, padded with blank images labelled -1 (which the metrics skip)."""
  num = -(-len(images) // batch_size)
  size = -(-len(images) // num)
  size += -size % devices
  pad = num * size - len(images)
  x = np.concatenate([images, np.zeros((pad, *images.shape[1:]), images.dtype)])
  y = np.concatenate([labels, np.full(pad, -1, labels.dtype)])
  return x.reshape(num, size, *images.shape[1:]), y.reshape(num, size)


def eval_sharded(mesh: Mesh) -> NamedSharding:
  """(num_batches, size, ...) arrays: each batch split across the mesh."""
  return NamedSharding(mesh, P(None, AXIS))


def put(tree: Any, sharding: NamedSharding) -> Any:
  """Host arrays (the same value in every process) -> global arrays."""
  def one(x):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])
  return jax.tree.map(one, tree)


def is_primary() -> bool:
  """Only process 0 writes logs and metrics files."""
  return jax.process_index() == 0


def check_shared_workdir(workdir: str) -> None:
  """Every process must see the files of one shared workdir. Orbax's
  multi-process save waits for a folder that process 0 creates: with one workdir
  per host (no shared filesystem) it times out after 600 s in a traceback.

  Process 0 (which has created `workdir`) writes a random token there; every
  process reads it back, and all learn who could not, so they stop together.
  """
  if jax.process_count() == 1:
    return
  path = os.path.join(workdir, '.shared_workdir_check')
  token = np.random.default_rng().integers(1, 2**31 - 1, dtype=np.int32)
  if is_primary():
    with open(path, 'w') as f:
      f.write(str(token))
  token = int(multihost_utils.broadcast_one_to_all(token))  # after the write
  try:
    with open(path) as f:
      seen = f.read() == str(token)
  except OSError:
    seen = False
  seen_by = multihost_utils.process_allgather(np.array(seen))
  if is_primary():
    os.remove(path)
  blind = [i for i, ok in enumerate(seen_by) if not ok]
  if blind:
    raise UserError(
        f'--workdir={workdir} is not one folder shared by every process: process '
        f'{", ".join(map(str, blind))} cannot see the file process 0 wrote there; '
        'give every process the same --workdir on a shared filesystem')


def describe() -> str:
  """The devices a run trains on, for its first log line."""
  first = jax.devices()[0]
  hosts = f' over {jax.process_count()} processes' if jax.process_count() > 1 else ''
  return f'{jax.device_count()} x {first.device_kind} ({first.platform}){hosts}'
