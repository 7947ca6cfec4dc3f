"""Which convolution and pooling kernels the layers use: ``OPTBENCH_KERNELS``.

The layers of :mod:`optbench_jax.nn.layers` (``Conv``, ``ConvTranspose``,
``max_pool``) compute the same functions in two ways:

* the library's operations (``flax.linen.Conv``, ``ConvTranspose``,
  ``max_pool``: XLA's convolution and ``reduce_window``, cuDNN on a GPU),
  the *accelerator path*;
* the project's own kernels (:mod:`.convolution`, :mod:`.pooling`), whose
  gradients XLA:CPU compiles to fast code inside ``lax.scan``, where it
  compiles the library's gradients to naive loops.

The environment variable ``OPTBENCH_KERNELS`` chooses, read when a model is
traced:

* ``auto`` (the default, also when unset or empty): the own kernels on the
  CPU backend, the library's on every other backend;
* ``accelerator``: the library's everywhere (on a CPU: to test the GPU
  path's layers without a GPU);
* ``cpu``: the own kernels everywhere.

Any other value raises a one-line :class:`~optbench_jax.errors.OptBenchError`
when a layer asks. :func:`use` sets the choice in-process for the code
traced inside it (tests). The in-process choice is a JAX configuration
state included in JAX's jit and tracing cache keys (as
:func:`optbench_jax.kernels.convolution.forward_mode_autodiff`'s), so a
function jitted under one choice is traced again under another; the
environment variable is read once per trace and is meant to be set before
the process starts.
"""
import contextlib
import os

import jax
from jax._src import config as _jax_config

from optbench_jax.errors import OptBenchError

ENV_VAR = "OPTBENCH_KERNELS"
CHOICES = ("auto", "accelerator", "cpu")

# None: the environment variable decides. (jax._src.config is JAX's own
# module for such states; there is no public constructor.)
_IN_PROCESS = _jax_config.optional_enum_state(
    "optbench_kernels_in_process", CHOICES, None,
    help="optbench_jax: the kernels the layers use, set by "
    "optbench_jax.kernels.select.use() (None: $OPTBENCH_KERNELS).",
    include_in_jit_key=True, include_in_trace_context=True)


def _checked(value: str, where: str) -> str:
  if value not in CHOICES:
    raise OptBenchError(f"{where}={value!r} is not a kernel choice. "
                        f"Valid choices: {', '.join(CHOICES)}.")
  return value


def choice() -> str:
  """The current choice: :func:`use`'s if inside it, else the variable's."""
  if _IN_PROCESS.value is not None:
    return _IN_PROCESS.value
  value = os.environ.get(ENV_VAR, "").strip().lower() or "auto"
  return _checked(value, ENV_VAR)


def use_own_kernels() -> bool:
  """Whether layers traced now use the own kernels (module docstring)."""
  selected = choice()
  if selected == "auto":
    return jax.default_backend() == "cpu"
  return selected == "cpu"


@contextlib.contextmanager
def use(value: str):
  """Traces inside it use ``value`` (one of :data:`CHOICES`) whatever
  ``OPTBENCH_KERNELS`` says."""
  with _IN_PROCESS(_checked(value, "kernels")):
    yield
