"""PyTorch ``state_dict`` <-> Flax variables, by a list of rules per model.

A model's mapping is a list of :class:`Rule`: the PyTorch module prefix
(``"layer1.0.conv1"``), the Flax module path (``("layer1_0", "conv1")``)
and a *kind*, a dict from the PyTorch tensor suffix (``"weight"``) to a
:class:`Leaf` (Flax collection, leaf name, and the layout transforms both
ways). :func:`torch_to_flax` walks the rules and builds
``{"params": ..., "batch_stats": ...}``; :func:`flax_to_torch` is the inverse.
Each model's rules live in its own module, as its model registry entry's
``conversion(info)``; the layers' rules live beside the layers
(:func:`~optbench_jax.nn.attention.torch_attention_rules`,
:func:`~optbench_jax.nn.recurrent.torch_rnn_rules`); this module holds the
mechanism and the kinds. A new layer type needs a kind
here (e.g. attention projections reshaped to ``(in, heads, head_dim)``).

Layout conventions (PyTorch -> Flax):

* convolution kernels ``(out, in, kh, kw)`` (OIHW) -> ``(kh, kw, in, out)``
  (HWIO); transposed convolutions ``(in, out, kh, kw)`` -> ``(kh, kw, out,
  in)`` (Flax's ``transpose_kernel=True`` layout), see
  :func:`conv_transpose`;
* dense kernels ``(out, in)`` -> ``(in, out)``; a dense layer that follows a
  flatten of an NCHW feature map (``cnn_scratch``) also permutes its input
  rows from ``(c, h, w)`` to ``(h, w, c)`` order, see
  :func:`dense_after_flatten`;
* batch norm ``weight, bias, running_mean, running_var`` -> ``scale, bias``
  (``params``) and ``mean, var`` (``batch_stats``); ``num_batches_tracked``
  has no Flax counterpart (ignored on import, exported as 0).

Tensors are numpy arrays on both sides, so this module never imports torch:
call it with ``{k: v.detach().cpu().numpy() for k, v in sd.items()}`` and load
the result of :func:`flax_to_torch` with
``model.load_state_dict({k: torch.from_numpy(v) ...})``.

>>> rules = [Rule("fc", ("fc",), dense())]
>>> sorted(torch_to_flax({"fc.weight": np.ones((3, 2)),
...                       "fc.bias": np.zeros(3)}, rules)["params"]["fc"])
['bias', 'kernel']
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import numpy as np

from optbench_jax.errors import OptBenchError

Array = np.ndarray
Transform = Callable[[Array], Array]
Variables = dict[str, Any]   # {"params": nested dict, "batch_stats": ...}

_identity: Transform = lambda x: x


class ConversionError(OptBenchError):
  """A state dict does not fit the model's mapping (names or shapes)."""


@dataclasses.dataclass(frozen=True)
class Leaf:
  """Where one PyTorch tensor goes in the Flax variables, and how.

  Attributes:
    collection: the Flax collection (``"params"``, ``"batch_stats"``), or None
      for a PyTorch-only tensor (skipped on import; on export ``default`` is
      written).
    name: the leaf name inside the Flax module (``"kernel"``).
    to_flax: PyTorch layout -> Flax layout.
    to_torch: the inverse of ``to_flax``.
    default: the value exported for a PyTorch-only tensor.
  """
  collection: Optional[str]
  name: str = ""
  to_flax: Transform = _identity
  to_torch: Transform = _identity
  default: Optional[Array] = None


Kind = Mapping[str, Leaf]   # PyTorch tensor suffix -> Leaf


@dataclasses.dataclass(frozen=True)
class Rule:
  """One PyTorch module <-> one Flax module."""
  torch: str
  flax: tuple
  kind: Kind


# -- kinds -------------------------------------------------------------------
def _oihw_to_hwio(w: Array) -> Array:
  return np.transpose(w, (2, 3, 1, 0))


def _hwio_to_oihw(k: Array) -> Array:
  return np.transpose(k, (3, 2, 0, 1))


def conv(use_bias: bool = True) -> Kind:
  """``nn.Conv2d`` <-> ``nn.Conv`` (OIHW <-> HWIO)."""
  kind = {"weight": Leaf("params", "kernel", _oihw_to_hwio, _hwio_to_oihw)}
  if use_bias:
    kind["bias"] = Leaf("params", "bias")
  return kind


def conv_transpose(use_bias: bool = True) -> Kind:
  """``nn.ConvTranspose2d`` <-> ``layers.ConvTranspose`` (transposed kernel).

  PyTorch stores ``(in, out, kh, kw)``; Flax's ``ConvTranspose`` with
  ``transpose_kernel=True`` stores ``(kh, kw, out, in)`` (and then computes
  PyTorch's function, with ``padding="VALID"`` for PyTorch's ``padding=0``):
  the same axis permutation as a convolution's OIHW -> HWIO, with the roles
  of ``in`` and ``out`` exchanged.
  """
  return conv(use_bias)


def dense(use_bias: bool = True) -> Kind:
  """``nn.Linear`` <-> ``nn.Dense`` (``(out, in)`` <-> ``(in, out)``)."""
  kind = {"weight": Leaf("params", "kernel", np.transpose, np.transpose)}
  if use_bias:
    kind["bias"] = Leaf("params", "bias")
  return kind


def dense_after_flatten(channels: int, height: int, width: int,
                        use_bias: bool = True) -> Kind:
  """A dense layer applied to a flattened feature map.

  PyTorch flattens an NCHW map in ``(c, h, w)`` order, Flax an NHWC map in
  ``(h, w, c)`` order; the kernel's input rows are permuted accordingly.

  Args:
    channels, height, width: the feature map's shape before the flatten.
    use_bias: whether the layer has a bias.

  Returns:
    The kind.
  """
  c, h, w = channels, height, width

  def to_flax(weight: Array) -> Array:
    out = weight.shape[0]
    return weight.reshape(out, c, h, w).transpose(2, 3, 1, 0).reshape(
        h * w * c, out)

  def to_torch(kernel: Array) -> Array:
    out = kernel.shape[-1]
    return kernel.reshape(h, w, c, out).transpose(3, 2, 0, 1).reshape(
        out, c * h * w)

  kind = {"weight": Leaf("params", "kernel", to_flax, to_torch)}
  if use_bias:
    kind["bias"] = Leaf("params", "bias")
  return kind


def batch_norm() -> Kind:
  """``nn.BatchNorm2d`` <-> ``nn.BatchNorm``."""
  return {"weight": Leaf("params", "scale"),
          "bias": Leaf("params", "bias"),
          "running_mean": Leaf("batch_stats", "mean"),
          "running_var": Leaf("batch_stats", "var"),
          "num_batches_tracked": Leaf(None,
                                      default=np.zeros((), np.int64))}


def layer_norm() -> Kind:
  """``nn.LayerNorm`` <-> ``nn.LayerNorm``."""
  return {"weight": Leaf("params", "scale"), "bias": Leaf("params", "bias")}


def embedding() -> Kind:
  """``nn.Embedding`` <-> ``nn.Embed``."""
  return {"weight": Leaf("params", "embedding")}


# -- conversion --------------------------------------------------------------
def _torch_name(rule: Rule, suffix: str) -> str:
  return f"{rule.torch}.{suffix}" if rule.torch else suffix


def _set(tree: dict, path: Sequence[str], value: Any) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  if path[-1] in tree:
    raise ConversionError(f"two rules write Flax leaf {'/'.join(path)}")
  tree[path[-1]] = value


def _get(tree: Mapping, path: Sequence[str]) -> Any:
  for key in path:
    if not isinstance(tree, Mapping) or key not in tree:
      return None
    tree = tree[key]
  return tree


def torch_to_flax(state_dict: Mapping[str, Any], rules: Iterable[Rule], *,
                  strict: bool = True,
                  template: Optional[Mapping[str, Any]] = None) -> Variables:
  """Converts a PyTorch state dict to Flax variables.

  Args:
    state_dict: name -> array (numpy, or anything ``np.asarray`` accepts).
    rules: the model's mapping (its registry entry's ``conversion(info)``).
    strict: require every tensor of every rule to be present and every tensor
      of ``state_dict`` to be used. With ``strict=False`` missing tensors are
      skipped (e.g. to convert a gradient dict, which has no running
      statistics) but unknown names still raise.
    template: optional Flax variables (e.g. ``model.init(...)``) the result
      must match in structure and shapes, for every collection the result
      holds.

  Returns:
    ``{collection: nested dict of numpy arrays}``.

  Raises:
    ConversionError: a name is missing or unused, or a shape does not match.
  """
  used, missing = set(), []
  variables: Variables = {}
  for rule in rules:
    for suffix, leaf in rule.kind.items():
      name = _torch_name(rule, suffix)
      if name not in state_dict:
        if leaf.collection is not None:
          missing.append(name)
        continue
      used.add(name)
      if leaf.collection is None:
        continue
      # A copy: torch.Tensor.numpy() shares memory with the module.
      value = np.array(leaf.to_flax(np.asarray(state_dict[name])), copy=True)
      _set(variables, (leaf.collection, *rule.flax, leaf.name), value)
  unused = sorted(set(state_dict) - used)
  if unused:
    raise ConversionError(f"PyTorch tensors with no rule: {unused[:8]}"
                          f"{' ...' if len(unused) > 8 else ''}")
  if strict and missing:
    raise ConversionError(f"PyTorch tensors missing from the state dict: "
                          f"{missing[:8]}{' ...' if len(missing) > 8 else ''}")
  if template is not None:
    check_matches(variables, template)
  return variables


def flax_to_torch(variables: Mapping[str, Any], rules: Sequence[Rule], *,
                  strict: bool = True) -> dict[str, Array]:
  """Converts Flax variables to a PyTorch state dict (numpy arrays).

  Args:
    variables: ``{"params": ..., "batch_stats": ...}`` (jax or numpy leaves).
    rules: the model's mapping.
    strict: require every leaf the rules name to be present in
      ``variables`` (with ``strict=False`` missing leaves, e.g. a whole
      ``batch_stats`` collection, are skipped).

  Returns:
    name -> numpy array, in the rules' order.

  Raises:
    ConversionError: a leaf is missing (``strict``), or a collection the
      rules use (``params``, ``batch_stats``) holds a leaf no rule names;
      other collections (e.g. the KFAC capture collections of
      ``model.init``) are ignored.
  """
  state_dict: dict[str, Array] = {}
  missing, used = [], set()
  for rule in rules:
    for suffix, leaf in rule.kind.items():
      name = _torch_name(rule, suffix)
      if leaf.collection is None:
        if leaf.default is not None:
          state_dict[name] = np.array(leaf.default)
        continue
      path = (leaf.collection, *rule.flax, leaf.name)
      value = _get(variables, path)
      if value is None:
        missing.append("/".join(path))
        continue
      used.add(path)
      state_dict[name] = np.array(leaf.to_torch(np.asarray(value)), copy=True,
                                  order="C")
  collections = {leaf.collection for rule in rules
                 for leaf in rule.kind.values() if leaf.collection}
  unused = sorted("/".join(p) for p in _leaf_paths(variables)
                  if p[0] in collections and p not in used)
  if unused:
    raise ConversionError(f"Flax leaves with no rule: {unused[:8]}"
                          f"{' ...' if len(unused) > 8 else ''}")
  if strict and missing:
    raise ConversionError(f"Flax leaves missing: {missing[:8]}"
                          f"{' ...' if len(missing) > 8 else ''}")
  return state_dict


def _leaf_paths(tree: Mapping, prefix: tuple = ()) -> list[tuple]:
  paths = []
  for key, value in tree.items():
    if isinstance(value, Mapping):
      paths.extend(_leaf_paths(value, prefix + (key,)))
    else:
      paths.append(prefix + (key,))
  return paths


def _shape(x: Any) -> tuple:
  shape = getattr(x, "shape", None)   # arrays and jax.ShapeDtypeStruct
  return tuple(shape) if shape is not None else np.shape(x)


def check_matches(variables: Mapping[str, Any],
                  template: Mapping[str, Any]) -> None:
  """Raises ConversionError unless ``variables`` has ``template``'s leaves.

  Only the collections present in ``variables`` are compared (so a params-only
  conversion can be checked against a full ``model.init`` result). Template
  leaves may be arrays or ``jax.ShapeDtypeStruct`` (``jax.eval_shape`` of
  ``model.init``, which costs no computation).
  """
  errors = []
  for collection in variables:
    got = {p: _shape(_get(variables[collection], p))
           for p in _leaf_paths(variables[collection])}
    want_tree = template.get(collection, {})
    want = {p: _shape(_get(want_tree, p)) for p in _leaf_paths(want_tree)}
    for path in sorted(set(got) | set(want)):
      where = "/".join((collection, *path))
      if path not in want:
        errors.append(f"{where}: not in the model")
      elif path not in got:
        errors.append(f"{where}: not converted")
      elif got[path] != want[path]:
        errors.append(f"{where}: shape {got[path]}, model has {want[path]}")
  if errors:
    raise ConversionError("converted variables do not fit the model: "
                          + "; ".join(errors[:8])
                          + (" ..." if len(errors) > 8 else ""))


# -- packed tensors (appended) -------------------------------------------------
class _Packing:
  """Splits a PyTorch tensor into ``count`` Flax leaves and joins them back.

  Import slices block ``index`` of ``count`` equal blocks along axis 0.
  Export cannot see the other leaves, so the kinds of one packing share this
  object: each leaf's export stores its block and returns the whole tensor
  with the blocks not yet stored filled with NaN; :func:`flax_to_torch`
  writes the same name once per leaf, the last write (whatever the rules'
  order) holds every block. A block stored twice starts a new export, so
  nothing carries over between calls; a leaf missing from the variables
  (``strict=False``) shows as NaN.
  """

  def __init__(self, count: int):
    self.count = count
    self.parts: dict[str, dict[int, Array]] = {}

  def leaf(self, suffix: str, index: int, name: str,
           to_flax: Transform = _identity,
           to_torch: Transform = _identity) -> Leaf:

    def split(tensor: Array) -> Array:
      if tensor.shape[0] % self.count:
        raise ConversionError(f"{suffix}: {tensor.shape[0]} rows do not split "
                              f"into {self.count} equal blocks")
      return to_flax(np.split(tensor, self.count, axis=0)[index])

    def join(value: Array) -> Array:
      parts = self.parts.setdefault(suffix, {})
      if index in parts:
        parts.clear()
      parts[index] = block = np.asarray(to_torch(value))
      filler = np.full(block.shape, np.nan, np.result_type(block, np.float32))
      whole = np.concatenate([parts.get(i, filler) for i in range(self.count)])
      if len(parts) == self.count:
        parts.clear()
      return whole.astype(block.dtype)

    return Leaf("params", name, split, join)


def packed_dense(count: int, weight: str = "in_proj_weight",
                 bias: Optional[str] = "in_proj_bias") -> list[Kind]:
  """``count`` dense layers stored as one PyTorch tensor of stacked rows.

  ``torch.nn.MultiheadAttention`` keeps its query, key and value projections
  as ``in_proj_weight (3·d, d)`` and ``in_proj_bias (3·d,)``: block ``i`` of
  the rows is the ``(out, in)`` weight of projection ``i``. The kinds
  returned, one per block and all with the same PyTorch module prefix, map
  block ``i`` to a Flax ``Dense`` (``kernel (in, out)``, ``bias``); see
  :class:`_Packing` for how export reassembles the tensor.

  Args:
    count: the number of blocks (3 for query, key, value).
    weight: the PyTorch name of the stacked weight.
    bias: the name of the stacked bias, or None without biases.

  Returns:
    ``count`` kinds, block order.
  """
  packing = _Packing(count)
  kinds = []
  for i in range(count):
    kind = {weight: packing.leaf(weight, i, "kernel", np.transpose,
                                 np.transpose)}
    if bias is not None:
      kind[bias] = packing.leaf(bias, i, "bias")
    kinds.append(kind)
  return kinds
