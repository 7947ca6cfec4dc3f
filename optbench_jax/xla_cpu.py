"""XLA:CPU settings that ``import optbench_jax`` applies, so no user needs flags.

XLA reads ``XLA_FLAGS`` once, when JAX starts its first backend; importing
``optbench_jax`` before anything runs on JAX therefore sets:

* ``--xla_cpu_experimental_ynn_fusion_type=-individual_convolution``: XLA's
  own (Eigen) convolutions instead of YNNPACK's. With the standard-layout
  gradients of :mod:`optbench_jax.kernels.convolution`, ResNet-18 trains
  1.3–1.4× faster with it on a 2-core CPU (jaxlib 0.10.2; README,
  *Performance*). YNNPACK's other fusions keep their defaults (its
  reductions are fast; ``tests/train/test_nan_detection.py`` checks that
  divergence is still detected with them).

Nothing is changed when

* ``XLA_FLAGS`` already names the flag (the user's choice wins);
* this jaxlib does not know the flag (an unknown flag aborts XLA at start:
  the flag is looked up in jaxlib's library first);
* a JAX backend has already started (too late to take effect);
* an accelerator plugin (CUDA, ROCm, TPU) is installed, unless
  ``JAX_PLATFORMS=cpu``: its own copy of XLA parses ``XLA_FLAGS`` too and
  may not know a CPU-only experimental flag;
* the process asks for several CPU devices
  (``--xla_force_host_platform_device_count`` or ``JAX_NUM_CPU_DEVICES``
  above 1): XLA:CPU's collectives then wait on the intra-op thread pool that
  Eigen's convolutions also block, and a 4-device data-parallel ResNet-18
  step deadlocked in its all-reduce (rendezvous timeout, 2-core CPU). With
  YNNPACK's convolutions it runs. :func:`check_devices` warns when several
  CPU devices appear after the flag was applied.

A second default, ``--xla_backend_extra_options=xla_cpu_disable_loop_unrolling``,
turns off LLVM's loop unrolling in XLA:CPU's generated code. Unrolled, the
loops of small arrays grew into huge straight-line code: compiling a
``(128, 10)`` uniform draw took 2.7 s instead of 0.6 s, ``cnn_scratch``'s
initialisation 8.2 s instead of 3.8 s, and a set of seven end-to-end tests
(compilation-bound tiny runs) 477 s instead of 389 s. Steady-state
training is not slower (``benchmarks/step_speed.py --variants jax_epoch``,
steps/s without → with: cnn_scratch 7.43 → 7.46, resnet18 0.133 → 0.149,
lstm_sentiment 2.44 → 2.66; all on this project's 2-core CPU, jaxlib
0.10.2). Sums may round differently (the order of a vectorised reduction's
partial sums changes: a training loss moved by 1e-7). It is left out when
``XLA_FLAGS`` already names ``xla_backend_extra_options``, jaxlib lacks the
option, a backend has started, or an accelerator plugin is installed (as
above); several CPU devices do not matter to it.

:func:`applied` says what happened, for the run metadata.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import mmap
import os
import pathlib
import pkgutil
import re
import sys
import warnings
from typing import Optional

FLAG = "xla_cpu_experimental_ynn_fusion_type"
VALUE = "-individual_convolution"
EXTRA_OPTIONS = "xla_backend_extra_options"
NO_UNROLLING = "xla_cpu_disable_loop_unrolling"
PLUGIN_MODULES = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin",
                  "jax_rocm7_plugin", "libtpu")

_outcome: Optional[str] = None


def _jaxlib_knows(flag: str) -> bool:
  """Whether ``flag`` is a string in jaxlib's XLA library (a registered flag)."""
  spec = importlib.util.find_spec("jaxlib")
  if spec is None or not spec.submodule_search_locations:
    return False
  needle = flag.encode()
  for directory in spec.submodule_search_locations:
    for library in sorted(pathlib.Path(directory).glob("libjax_common*")):
      with open(library, "rb") as handle, mmap.mmap(
          handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
        if data.find(needle) >= 0:
          return True
  return False


def _accelerator_plugins() -> list[str]:
  found = [name for name in PLUGIN_MODULES
           if importlib.util.find_spec(name) is not None]
  try:
    namespace = importlib.import_module("jax_plugins")
    found += [m.name for m in pkgutil.iter_modules(namespace.__path__)]
  except ImportError:
    pass
  found += [e.name for e in importlib.metadata.entry_points(group="jax_plugins")]
  return found


def _backend_started() -> bool:
  bridge = sys.modules.get("jax._src.xla_bridge")
  return bridge is not None and bridge.backends_are_initialized()


def _add(flag: str, value: str, *, known: str, devices_matter: bool) -> str:
  """Adds ``--flag=value`` to ``XLA_FLAGS`` where safe (``known``: the
  string jaxlib must hold); says what it did."""
  flags = os.environ.get("XLA_FLAGS", "")
  platforms = os.environ.get("JAX_PLATFORMS", "")
  devices = _requested_cpu_devices(flags)
  if flag in flags:
    return "kept the user's XLA_FLAGS setting of " + flag
  if devices_matter and devices > 1:
    return (f"not applied: {devices} CPU devices (Eigen convolutions "
            "can deadlock XLA:CPU's collectives)")
  if _backend_started():
    return "not applied: a JAX backend had started before the import"
  if platforms.strip().lower() != "cpu" and _accelerator_plugins():
    return ("not applied: an accelerator plugin is installed "
            "(set JAX_PLATFORMS=cpu to apply it on the CPU)")
  if not _jaxlib_knows(known):
    return "not applied: this jaxlib has no " + known
  os.environ["XLA_FLAGS"] = f"{flags} --{flag}={value}".strip()
  return f"applied --{flag}={value}"


def apply_defaults() -> str:
  """Adds the default flags to ``XLA_FLAGS`` where safe; returns what it
  did: the convolutions' flag, then ``; `` and the loop unrolling's."""
  global _outcome
  if _outcome is None:
    _outcome = "; ".join((_add(FLAG, VALUE, known=FLAG, devices_matter=True),
                          _add(EXTRA_OPTIONS, NO_UNROLLING, known=NO_UNROLLING,
                               devices_matter=False)))
  return _outcome


def _requested_cpu_devices(flags: str) -> int:
  counts = re.findall(r"--xla_force_host_platform_device_count=(\d+)", flags)
  counts.append(os.environ.get("JAX_NUM_CPU_DEVICES", ""))
  return max([int(c) for c in counts if str(c).strip().isdigit()] + [1])


def check_devices(devices) -> None:
  """Warns if ``devices`` are several CPU devices and the flag is applied
  (made after the import, e.g. by ``jax.config.update("jax_num_cpu_devices",
  n)``): their collectives may deadlock (module docstring)."""
  if (len(devices) > 1 and devices[0].platform == "cpu"
      and (_outcome or "").startswith("applied")):
    warnings.warn(
        f"{len(devices)} CPU devices with --{FLAG}={VALUE}, which optbench_jax "
        "applied on import: XLA:CPU's collectives can deadlock with Eigen "
        "convolutions. Set XLA_FLAGS=--xla_force_host_platform_device_count="
        f"{len(devices)} before starting Python (the flag is then left off).",
        stacklevel=2)


def applied() -> Optional[str]:
  """What :func:`apply_defaults` did in this process (None before it ran)."""
  return _outcome
