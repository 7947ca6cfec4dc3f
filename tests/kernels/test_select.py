"""``OPTBENCH_KERNELS`` and ``select.use``: which kernels the layers trace.

``auto`` (unset, empty) uses the own kernels on the CPU backend only,
``accelerator`` flax's operations everywhere, ``cpu`` the own kernels
everywhere; a bad value is a one-line ``OptBenchError``. The in-process
choice is part of JAX's jit key: a function jitted under one choice is
traced again under the other (and not again under the same one).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optbench_jax.errors import OptBenchError
from optbench_jax.kernels import select
from optbench_jax.nn import layers


@pytest.mark.parametrize("value, own", [(None, True), ("", True),
                                        ("auto", True), (" CPU ", True),
                                        ("accelerator", False),
                                        ("cpu", True)])
def test_environment_variable(monkeypatch, value, own):
  assert jax.default_backend() == "cpu"   # the tests' backend (conftest)
  if value is None:
    monkeypatch.delenv(select.ENV_VAR, raising=False)
  else:
    monkeypatch.setenv(select.ENV_VAR, value)
  assert select.use_own_kernels() is own


def test_bad_values_are_one_line_errors(monkeypatch):
  monkeypatch.setenv(select.ENV_VAR, "gpu")
  with pytest.raises(OptBenchError, match="OPTBENCH_KERNELS='gpu'") as e:
    select.use_own_kernels()
  assert "\n" not in str(e.value) and "accelerator" in str(e.value)
  with pytest.raises(OptBenchError, match="not a kernel choice"):
    with select.use("tpu"):
      pass


def test_in_process_choice_overrides_the_variable(monkeypatch):
  monkeypatch.setenv(select.ENV_VAR, "accelerator")
  with select.use("cpu"):
    assert select.choice() == "cpu" and select.use_own_kernels()
    with select.use("accelerator"):
      assert not select.use_own_kernels()
    assert select.use_own_kernels()
  assert select.choice() == "accelerator"


def test_the_choice_is_part_of_the_jit_key():
  """A jitted max-pool traced on the own kernels (slices, no
  ``reduce_window``) is traced again inside ``use("accelerator")`` (flax's
  ``reduce_window``), once; both give the same values."""
  traces = []

  @jax.jit
  def pool(x):
    traces.append(select.use_own_kernels())
    return layers.max_pool(x, (2, 2))

  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 6, 6, 3)),
                  jnp.float32)
  own = pool(x)
  pool(x)
  with select.use("accelerator"):
    library = pool(x)
    pool(x)
    text = pool.lower(x).as_text()
  assert traces == [True, False]
  assert "reduce_window" in text
  assert "reduce_window" not in pool.lower(x).as_text()
  np.testing.assert_array_equal(own, library)
