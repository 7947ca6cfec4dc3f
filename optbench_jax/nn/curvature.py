"""What curvature methods read from the layers: inputs and output-gradients.

``Dense`` and ``Conv`` (:mod:`optbench_jax.nn.layers`) record their input with
``sow("kfac_inputs", "inputs", x)`` and pass their pre-activation output
through ``perturb("outputs", y)``, so that the gradient of the loss with
respect to the zero "perturbations" collection is the gradient with respect to
the layer's output. Both are no-ops unless the caller makes ``kfac_inputs``
mutable or passes ``perturbations``: the model's outputs and cost are
unchanged for every other optimizer (as in kfac-jax, curvature estimation
never changes the model). The collections mirror the parameter tree:
``params[path] = {"kernel", "bias"}`` pairs with
``kfac_inputs[path]["inputs"] = (x,)`` and ``perturbations[path]["outputs"]``.
A ``Conv`` also records ``kfac_inputs[path]["geometry"] = (ConvGeometry,)``,
how its inputs map to its kernel; a plain 2-D ``Conv`` records its im2col
patches ``(N, H_out, W_out, kh·kw·C_in)`` (ordered like the flattened HWIO
kernel, ``geometry.patches`` true) instead of ``x``.
"""
from typing import Any

import jax
from flax import struct

KFAC_INPUTS = "kfac_inputs"
PERTURBATIONS = "perturbations"


@struct.dataclass
class ConvGeometry:
  """How a convolution's recorded inputs map to its kernel (static only).

  A pytree without leaves (every field is static), so it passes through
  ``jit``, ``vmap`` and tree maps of the statistics unchanged.

  Attributes:
    kernel_size: the window, one entry per spatial axis.
    strides: per spatial axis.
    padding: ``((low, high), ...)`` per spatial axis, or Flax's padding
      string when it is not ``"SAME"``/``"VALID"`` (``"CIRCULAR"``, ...).
    input_dilation: per spatial axis (``lhs_dilation``).
    kernel_dilation: per spatial axis (``rhs_dilation``).
    feature_group_count: groups of input channels.
    patches: whether the recorded inputs already are the patches
      ``(N, *out_spatial, prod(kernel_size)·C_in)`` in kernel order.
  """
  kernel_size: tuple = struct.field(pytree_node=False)
  strides: tuple = struct.field(pytree_node=False)
  padding: Any = struct.field(pytree_node=False)
  input_dilation: tuple = struct.field(pytree_node=False)
  kernel_dilation: tuple = struct.field(pytree_node=False)
  feature_group_count: int = struct.field(pytree_node=False, default=1)
  patches: bool = struct.field(pytree_node=False, default=False)


def layer_statistics(apply_fn, loss_of_outputs, params):
  """Per-layer inputs and output-gradients for Kronecker-factored curvature.

  Args:
    apply_fn: ``apply_fn(variables, mutable) -> (outputs, mutated)``, the model
      on the current mini-batch; ``variables`` holds ``"params"`` and possibly
      ``"perturbations"``, the caller adds any other collections (batch
      statistics) itself.
    loss_of_outputs: ``outputs -> scalar`` mini-batch loss (mean over the
      valid examples).
    params: the parameters.

  Returns:
    ``{"inputs": tree, "output_grads": tree}`` where, for each capturing layer
    at path ``P`` (the same path as its parameters), ``inputs[P]["inputs"]``
    is a one-element tuple holding the layer input ``x`` (a plain 2-D
    convolution's patches), ``inputs[P]["geometry"]`` a one-element tuple
    holding a convolution's :class:`ConvGeometry`, and
    ``output_grads[P]["outputs"]`` is ``∂ loss / ∂ y`` for the layer output
    ``y`` (the gradient of the *mean* loss: multiply by the batch size for
    per-example gradients).
  """
  _, captured = apply_fn({"params": params}, [KFAC_INPUTS, PERTURBATIONS])
  zeros = captured[PERTURBATIONS]

  def loss_of_perturbations(perturbations):
    outputs, _ = apply_fn({"params": params, PERTURBATIONS: perturbations}, [])
    return loss_of_outputs(outputs)

  return {"inputs": captured[KFAC_INPUTS],
          "output_grads": jax.grad(loss_of_perturbations)(zeros)}
