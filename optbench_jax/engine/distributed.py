"""Several processes (hosts) training one program: ``jax.distributed``.

With ``--distributed`` every process runs the same campaign; JAX sees the
devices of all processes, the data-parallel mesh spans them, and XLA's
collectives (NCCL on GPUs, Gloo on CPUs) all-reduce the gradients. Every
process holds the (small) splits and the replicated state; each device
computes its shard of the batch. Results are written by process 0 only;
Orbax checkpoints are written by all processes together (Orbax coordinates
them). The result directory must be on a file system all processes see.

Launch one process per host, e.g. on a SLURM / Open MPI cluster (detected
by JAX) ``srun python -m optbench_jax run --distributed ...``, or by hand
``python -m optbench_jax run --distributed --coordinator host0:1234
--num-processes 2 --process-id {0,1} ...``.
"""
from __future__ import annotations

from typing import Any, Optional

import jax
import numpy as np
from jax.sharding import Mesh

from optbench_jax import xla_cpu
from optbench_jax.errors import OptBenchError

# The mesh axis the batch is split over (data parallelism).
DATA_AXIS = "data"


def initialize(coordinator: Optional[str] = None,
               num_processes: Optional[int] = None,
               process_id: Optional[int] = None) -> None:
  """``jax.distributed.initialize`` (cluster auto-detection without args)."""
  # CPU hosts exchange gradients through Gloo; GPUs use NCCL regardless.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  try:
    jax.distributed.initialize(coordinator_address=coordinator,
                               num_processes=num_processes,
                               process_id=process_id)
  except (RuntimeError, ValueError) as e:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e)
    raise OptBenchError(
        f"--distributed: could not join the processes ({first}); give "
        f"--coordinator HOST:PORT --num-processes N --process-id I, or run "
        f"under a cluster manager JAX detects (SLURM, Open MPI)") from None


def multi_process() -> bool:
  return jax.process_count() > 1


def is_primary() -> bool:
  """Whether this process writes results (process 0)."""
  return jax.process_index() == 0


def barrier(name: str) -> None:
  """All processes reach this point before any goes on."""
  if multi_process():
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


def put(x: Any, sharding: jax.sharding.Sharding) -> Any:
  """``jax.device_put`` of one leaf that also places PRNG key arrays on
  devices of other processes (their raw data is placed, then re-wrapped)."""
  if isinstance(x, jax.Array) and jax.dtypes.issubdtype(
      x.dtype, jax.dtypes.prng_key) and multi_process():
    data = jax.device_put(np.asarray(jax.random.key_data(x)), sharding)
    return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
  return jax.device_put(x, sharding)


def to_host(tree: Any) -> Any:
  """``jax.device_get`` for arrays that may span several processes."""
  if not multi_process():
    return jax.device_get(tree)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

  def get(x):
    if not isinstance(x, jax.Array):
      return x
    if x.is_fully_addressable:
      return np.asarray(x)
    if x.is_fully_replicated:
      return np.asarray(x.addressable_data(0))
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))

  return jax.tree.map(get, tree)


def data_parallel_size(devices: Optional[int]) -> int:
  """How many devices ``--devices`` trains on (checked, one-line errors);
  :func:`make_mesh` builds the mesh over them."""
  if multi_process():
    available = jax.devices()
    if devices not in (None, len(available)):
      raise OptBenchError(f"--devices {devices}: with --distributed the mesh "
                          f"spans all {len(available)} devices of the "
                          f"{jax.process_count()} processes")
    return len(available)
  available = jax.local_devices()
  count = len(available) if devices is None else devices
  if not 1 <= count <= len(available):
    raise OptBenchError(f"--devices {count}: this machine has "
                        f"{len(available)} {available[0].platform} device(s)")
  return count


def make_mesh(devices: Optional[int]) -> Optional[Mesh]:
  """A one-axis data-parallel mesh over ``devices`` local devices.

  ``None`` means all of them; one device means no mesh (the plain program).
  With several processes the mesh spans every process's devices.
  """
  count = data_parallel_size(devices)
  if multi_process():
    return Mesh(np.array(jax.devices()), (DATA_AXIS,))
  available = jax.local_devices()
  if count == 1:
    return None
  xla_cpu.check_devices(available[:count])
  return Mesh(np.array(available[:count]), (DATA_AXIS,))
