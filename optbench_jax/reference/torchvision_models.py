"""torchvision's model definitions, importable beside a CPU build of torch.

torchvision's PyPI wheel for Linux is built against CUDA torch: on a CPU
build of the same torch version its compiled extension (``torchvision._C``:
NMS, RoI pooling, deformable convolution and image decoding kernels) cannot
load (``libc10_cuda.so`` is missing), and ``import torchvision`` then fails
while registering fake kernels for ``torchvision::nms`` / ``qnms``, operators
the extension would have defined. The model definitions
(``torchvision.models``) are plain ``torch.nn`` and need none of those
kernels. :func:`import_torchvision` defines the two operators' schemas
(torchvision's own signatures, with no kernel: calling them raises) when the
extension is unavailable, then imports torchvision, so the equivalence tests
compare the Flax models against torchvision's real model code.

Test and benchmark support only: like ``torch_models``, nothing in the
package imports this module.
"""
from __future__ import annotations

import importlib.util

import torch

# The operators torchvision/_meta_registrations.py registers fakes for
# unconditionally (the others it guards with ``extension._has_ops()``), with
# the schemas of torchvision/csrc/ops/nms.cpp and quantized/qnms_kernel.cpp.
_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_LIBRARY = []   # keeps the definitions alive for the process


def _extension_loads() -> bool:
  spec = importlib.util.find_spec("torchvision")
  if spec is None:
    return False
  try:
    torch.ops.load_library(_extension_path(spec))
  except (OSError, RuntimeError):
    return False
  return True


def _extension_path(spec) -> str:
  import glob
  import os
  directory = os.path.dirname(spec.origin)
  found = glob.glob(os.path.join(directory, "_C*.so"))
  if not found:
    raise OSError("torchvision has no compiled extension")
  return found[0]


def define_missing_operators() -> None:
  """Defines the operators torchvision's import needs when its extension
  cannot load (a no-op otherwise, or without torchvision). Also needed
  before anything else imports torchvision, e.g. ``transformers``, which
  does when it is installed."""
  if importlib.util.find_spec("torchvision") is None or _LIBRARY:
    return
  if hasattr(torch.ops.torchvision, "nms") or _extension_loads():
    return
  library = torch.library.Library("torchvision", "DEF")
  for schema in _SCHEMAS.values():
    library.define(schema)
  _LIBRARY.append(library)


def import_torchvision():
  """``torchvision``, or ImportError when it is not installed."""
  if importlib.util.find_spec("torchvision") is None:
    raise ImportError("torchvision is not installed (pip install "
                      "'optbench_jax[test]')")
  define_missing_operators()
  import torchvision  # pylint: disable=import-outside-toplevel
  return torchvision
