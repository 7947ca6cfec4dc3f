"""optbench_jax: a JAX-native benchmark of deep-learning optimizers."""
from optbench_jax import xla_cpu as _xla_cpu

__version__ = "0.1.0"

# Before any JAX backend starts: XLA reads XLA_FLAGS once (see xla_cpu.py).
_xla_cpu.apply_defaults()
