"""Low-level array kernels: the project's own convolution and pooling.

Functions of arrays only (no Flax modules, no models): :mod:`.convolution`
(2-D convolutions with hand-written gradients, im2col, the transposed
convolution whose windows tile its output), :mod:`.pooling` (max pooling
from strided slices) and :mod:`.select` (whether the layers of
:mod:`optbench_jax.nn` use these kernels or the library's, the
``OPTBENCH_KERNELS`` switch). This package imports only JAX, NumPy and
:mod:`optbench_jax.errors`, so every other layer of the project may use it.
"""
