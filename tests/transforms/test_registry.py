"""The registry's contract: keywords, defaults, masks and weight-decay modes.

* An entry that configures (or mirrors) an optax function accepts every
  keyword of that function under optax's name; an unknown keyword gives a
  one-line error listing every valid one.
* The defaults are stated once, by the factory's signature:
  ``spec.hyperparameters`` reads them back.
* ``exclude_bias_norm`` is a setting of the run, mapped onto each entry's
  mask keywords by the data of its entry (``spec.masks``); an explicit mask
  together with it is refused.
* Wrappers hand weight decay to their base (mode ``"base"``).
* Without a weight decay each entry uses its reference's default (a
  wrapper its base's).
"""
import importlib
import inspect
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from optbench_jax import transforms
from optbench_jax.errors import OptBenchError
from optbench_jax.engine import optimizer as run_optimizer
from optbench_jax.transforms import base
from tests.transforms import torch_reference as ref

NAMES = list(transforms.available())
OPTAX_ENTRIES = [n for n in NAMES if transforms.get(n).optax_function]
PARAMS = {"w": jnp.ones((3, 2)), "b": jnp.ones(2)}


def _keywords(fn):
  return set(inspect.signature(fn).parameters) - set(base.RUN_SETTINGS)


def test_the_optax_entries_are_the_expected_ones():
  # Guards the parametrisation below against an empty or shrunken list.
  assert {"sgd", "sgd_momentum", "nesterov", "lars", "adam", "adamw",
          "amsgrad", "rmsprop", "adagrad", "adadelta", "adafactor",
          "adabelief", "radam", "lion", "lamb", "yogi", "lbfgs", "muon",
          "schedule_free_adamw", "adopt", "ademamix", "prodigy",
          "dadapt_adamw", "dog", "madgrad"} <= set(OPTAX_ENTRIES)


@pytest.mark.parametrize("name", OPTAX_ENTRIES)
def test_every_keyword_of_the_optax_function_is_accepted(name):
  spec = transforms.get(name)
  optax_keywords = _keywords(spec.optax_function)
  assert optax_keywords <= set(spec.hyperparameters), (
      optax_keywords - set(spec.hyperparameters))
  masks = set(spec.masks.values())
  for keyword in sorted(optax_keywords):
    # The entry's own default for the keyword (optax's, or the entry's
    # documented choice), passed explicitly by name: accepted and built.
    value = spec.hyperparameters[keyword]
    tx = transforms.make(name, **{keyword: value})
    assert isinstance(tx, optax.GradientTransformationExtraArgs), keyword
    if keyword not in masks:
      continue
    with pytest.raises(OptBenchError, match="exclude_bias_norm"):
      transforms.make(name, exclude_bias_norm=True, **{keyword: value})


def test_keywords_the_old_entries_refused():
  # rmsprop fixed eps_in_sqrt=False and adamw took its mask from make's own
  # argument: both are now the optax keywords, with effect.
  params = ref.make_params(0)
  grads = ref.noisy_quadratic(params)
  with jax.enable_x64(True):
    for name, keyword, value, alias in [
        ("rmsprop", "eps_in_sqrt", True,
         optax.rmsprop(1e-2, decay=0.99, eps=1e-3, eps_in_sqrt=True)),
        ("adamw", "mask", {"w": False, "b": True, "k": False},
         optax.adamw(1e-2, weight_decay=0.5,
                     mask={"w": False, "b": True, "k": False}))]:
      kwargs = dict(eps=1e-3) if name == "rmsprop" else {}
      ours = ref.run_optax(
          transforms.make(name, 1e-2, weight_decay=0.5 * (name == "adamw"),
                          **{keyword: value}, **kwargs),
          params, 5, grads)
      theirs = ref.run_optax(alias, params, 5, grads)
      # Same optax function, same keywords: identical (measured 0).
      assert ref.step_errors(ours, theirs).max() == 0.0, name


@pytest.mark.parametrize("name", NAMES)
def test_hyperparameters_are_the_signature_defaults(name):
  spec = transforms.get(name)
  signature = inspect.signature(spec.factory).parameters
  for keyword, default in spec.hyperparameters.items():
    if name == "kfac" and keyword == "damping":
      continue  # kfac.py overrides its factory's default in the registry
    assert signature[keyword].default is default, keyword
  assert not set(spec.hyperparameters) & set(base.RUN_SETTINGS)


def test_configure_replaces_defaults_in_the_signature():
  factory = transforms.configure(optax.rmsprop, decay=0.99)
  assert inspect.signature(factory).parameters["decay"].default == 0.99
  assert factory.configures is optax.rmsprop
  assert _keywords(factory) == _keywords(optax.rmsprop)
  with pytest.raises(ValueError, match="no parameter"):
    transforms.configure(optax.rmsprop, not_a_keyword=1)


@pytest.mark.parametrize("name", NAMES)
def test_unknown_keyword_error_lists_every_valid_keyword(name):
  with pytest.raises(OptBenchError) as error:
    transforms.make(name, not_a_keyword=1.0)
  message = str(error.value)
  assert "\n" not in message
  assert "not_a_keyword" in message
  valid = message.split("valid: ", 1)[1]
  for keyword in transforms.get(name).hyperparameters:
    assert keyword in valid, keyword
  for setting in base.RUN_SETTINGS:
    assert setting in valid


def test_build_takes_exclude_bias_norm_and_refuses_conflicts():
  tx = run_optimizer.build("adamw", 1e-2, weight_decay=0.5,
                           exclude_bias_norm=True)
  state = tx.init(PARAMS)
  zero = jax.tree.map(jnp.zeros_like, PARAMS)
  updates, _ = tx.update(zero, state, PARAMS)
  # Zero gradient: only the decay moves, and only the matrix.
  assert float(jnp.abs(updates["b"]).max()) == 0.0
  np.testing.assert_allclose(updates["w"], -1e-2 * 0.5 * PARAMS["w"])
  with pytest.raises(OptBenchError, match="not both"):
    run_optimizer.build("adamw", 1e-2, exclude_bias_norm=True,
                        hyperparameters={"mask": None})
  with pytest.raises(OptBenchError, match="valid: "):
    run_optimizer.build("rmsprop", 1e-2, hyperparameters={"alpha": 0.9})


def _decay_only(name, exclude_bias_norm, **keywords):
  """The update of a zero gradient: what weight decay alone does."""
  tx = transforms.make(name, 0.1, weight_decay=0.5,
                       exclude_bias_norm=exclude_bias_norm, **keywords)
  zero = jax.tree.map(jnp.zeros_like, PARAMS)
  extras = {}
  spec = transforms.get(name)
  if "grad_fn" in spec.needs:
    extras["grad_fn"] = lambda p: (0.0, jax.tree.map(jnp.zeros_like, p))
  updates, _ = tx.update(zero, tx.init(PARAMS), PARAMS, **extras)
  return updates


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw", "lion", "lamb",
                                  "lars", "adadelta", "dog", "madgrad",
                                  "adabelief", "sam", "lookahead", "svrg"])
def test_exclude_bias_norm_exempts_1d_tensors(name):
  # Default: every tensor moves under decay alone; excluded: only the
  # matrix, by what it moved by default (DoG's step size is global, so its
  # matrix step changes when the bias no longer contributes). The reference
  # comparisons in test_first_order.py check the values.
  keywords = {"base_hyperparameters": {"momentum": None}} if name in (
      "sam",) else {}
  default = _decay_only(name, False, **keywords)
  excluded = _decay_only(name, True, **keywords)
  assert float(jnp.abs(default["b"]).max()) > 0, name
  assert float(jnp.abs(default["w"]).max()) > 0, name
  assert float(jnp.abs(excluded["b"]).max()) == 0, name
  if name != "dog":
    np.testing.assert_allclose(excluded["w"], default["w"], rtol=1e-6)


@pytest.mark.parametrize("name", ["prodigy", "dadapt_adamw"])
def test_exclusion_refused_where_the_rule_cannot_mask(name):
  with pytest.raises(OptBenchError, match="every tensor"):
    transforms.make(name, weight_decay=0.1, exclude_bias_norm=True)
  transforms.make(name, weight_decay=0.0, exclude_bias_norm=True)


def test_weight_decay_modes():
  modes = {n: transforms.get(n).weight_decay for n in NAMES}
  assert set(modes.values()) <= set(transforms.WEIGHT_DECAY_MODES)
  for name in ("sam", "gsam", "lookahead", "svrg"):
    assert modes[name] == "base", name
  assert modes["lbfgs"] == "objective"
  assert modes["ranger"] == "decoupled"  # Ranger decays itself
  # "base": the base applies the decay, in its own mode: lookahead(adam) is
  # coupled (through Adam's ratio), lookahead(adamw) decoupled.
  coupled = _decay_only("lookahead", False)
  decoupled = _decay_only("lookahead", False, base="adamw")
  assert float(jnp.abs(decoupled["w"] + 0.1 * 0.5 * PARAMS["w"]).max()) < 1e-6
  assert not np.allclose(coupled["w"], decoupled["w"])


def test_spec_refuses_inconsistent_entries():
  with pytest.raises(ValueError, match="weight_decay"):
    transforms.OptimizerSpec(name="x", factory=optax.adam, family="adaptive",
                             default_lr=1.0, weight_decay="decoupled")
  with pytest.raises(ValueError, match="mask"):
    transforms.OptimizerSpec(name="x", factory=optax.adamw,
                             family="adaptive", default_lr=1.0,
                             weight_decay="decoupled",
                             masks={"weight_decay": "weight_decay_mask"})
  with pytest.raises(ValueError, match="not accepted"):
    transforms.OptimizerSpec(name="x", factory=optax.adam, family="adaptive",
                             default_lr=1.0, optax_function=optax.adamw)


def test_lbfgs_linesearch_takes_optax_values_too():
  # optax.lbfgs's `linesearch` is a transformation or None; ours also takes
  # "zoom" / "none". The optax values give the same iterates (measured 0).
  params = {"w": jnp.asarray([[1.0, -2.0], [0.5, 3.0]]), "b": jnp.ones(2)}
  loss = lambda p: jnp.sum((p["w"] - 0.3) ** 4) + jnp.sum(p["b"] ** 2)

  def run(tx, steps=4):
    @jax.jit  # one compilation (eager, the zoom line search's loops
    def step(p, state):  # compile op by op at every step)
      value, grads = jax.value_and_grad(loss)(p)
      updates, state = tx.update(grads, state, p, value=value, value_fn=loss)
      return optax.apply_updates(p, updates), state

    p, state = params, tx.init(params)
    for _ in range(steps):
      p, state = step(p, state)
    return p

  for ours, optax_value in [
      ("none", None),
      ("zoom", optax.scale_by_zoom_linesearch(20,
                                              initial_guess_strategy="one"))]:
    a = run(transforms.make("lbfgs", 0.5, linesearch=ours))
    b = run(transforms.make("lbfgs", 0.5, linesearch=optax_value))
    assert ref.relative_error(a, b) == 0.0, ours
    assert ref.relative_error(a, params) > 1e-2


def _reference_class(reference: str):
  """The class a ``reference`` text names first (``torch.optim.AdamW``,
  ``pytorch_optimizer.SAM(base_optimizer=...)``, ``dog.DoG (...)``), or None
  for a reference that names none."""
  match = re.match(r"([A-Za-z_][\w.]*)\.(\w+)", reference)
  if match is None:
    return None
  try:
    module = importlib.import_module(match.group(1))
  except ImportError:
    pytest.skip(f"{match.group(1)} is not installed")
  return getattr(module, match.group(2))


@pytest.mark.parametrize("name", NAMES)
def test_default_weight_decay_is_the_references(name):
  # The default of the reference class the equivalence tests compare with
  # (its signature's weight_decay; 0 where it has none or requires one); a
  # wrapper's is its base's. Fails on a registry whose adamw default is 0.
  spec = transforms.get(name)
  default = transforms.default_weight_decay(name)
  if spec.weight_decay == "base":
    assert default == transforms.default_weight_decay(
        spec.hyperparameters["base"])
    return
  cls = _reference_class(spec.reference)
  parameter = (inspect.signature(cls).parameters.get("weight_decay")
               if cls is not None else None)
  expected = (0.0 if parameter is None or parameter.default is parameter.empty
              else parameter.default)
  assert default == expected, (name, spec.reference)


def test_make_without_weight_decay_uses_the_default():
  def step(name, **keywords):
    tx = transforms.make(name, 0.1, **keywords)
    grads = jax.tree.map(jnp.ones_like, PARAMS)
    return tx.update(grads, tx.init(PARAMS), PARAMS)[0]["w"]

  assert transforms.default_weight_decay("adamw") == 1e-2
  np.testing.assert_array_equal(step("adamw"),
                                step("adamw", weight_decay=1e-2))
  assert not np.allclose(step("adamw"), step("adamw", weight_decay=0.0))
  # A wrapper decays by its base's default.
  assert transforms.default_weight_decay("lookahead") == 0.0
  assert transforms.default_weight_decay("lookahead", base="adamw") == 1e-2
  np.testing.assert_array_equal(
      step("lookahead", base="adamw"),
      step("lookahead", base="adamw", weight_decay=1e-2))


def test_spec_refuses_unusable_default_weight_decays():
  for mode, default in (("coupled", -1.0), ("coupled", float("nan")),
                        ("none", 0.1)):
    with pytest.raises(ValueError, match="default_weight_decay"):
      transforms.OptimizerSpec(name="x", factory=optax.sgd, family="gd",
                               default_lr=1.0, weight_decay=mode,
                               default_weight_decay=default)
