"""PyTorch references of the Flax models, for equivalence tests and benchmarks.

The models' twins (``torch_vision``, ``torch_segmentation``, ``torch_text``,
``torch_generation``: one function per registered model, named as the
model, which its registry entry's ``torch_twin`` names by its dotted path),
what twins share (``torch_models``) and torchvision's model code on a CPU
build of torch (``torchvision_models``), and the tasks' losses
(``torch_losses``: one class per task family, which ``Task.reference_loss``
names by its dotted path). Those modules import torch (a test
and benchmark dependency only); importing this package does not, and
nothing else in ``optbench_jax`` imports them.
"""
