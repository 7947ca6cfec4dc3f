"""The 2-D test functions (minima, gradients) and the trajectory script."""
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optbench_jax.errors import OptBenchError
from optbench_jax.transforms import test_functions as tf
from tests.train.helpers import load_script

def _script():
  return load_script("test_functions")


@pytest.mark.parametrize("name", list(tf.FUNCTIONS))
def test_minimizers_have_the_minimum_value_and_zero_gradient(x64, name):
  function = tf.get(name)
  for point in function.minimizers:
    xy = jnp.asarray(point, jnp.float64)
    assert abs(float(function.fn(xy)) - function.minimum) <= 1e-12 * max(
        1.0, abs(function.minimum))
    assert float(jnp.max(jnp.abs(jax.grad(function.fn)(xy)))) < 1e-9
  # Nothing on a fine grid of the plotting domain is below the minimum.
  (x0, x1), (y0, y1) = function.domain
  xx, yy = np.meshgrid(np.linspace(x0, x1, 401), np.linspace(y0, y1, 401))
  values = jax.vmap(function.fn)(jnp.asarray(np.stack([xx.ravel(),
                                                       yy.ravel()], 1)))
  assert float(jnp.min(values)) >= function.minimum - 1e-9
  (sx, sy) = function.start
  assert x0 < sx < x1 and y0 < sy < y1
  assert float(function.fn(jnp.asarray(function.start))) > function.minimum + 1


def test_known_values():
  assert tf.rosenbrock(jnp.asarray([-1.2, 1.0])) == pytest.approx(24.2)
  assert tf.beale(jnp.asarray([0.0, 0.0])) == pytest.approx(14.203125)
  shubert = tf.get("schubert")  # the alternative spelling
  assert shubert is tf.get("shubert")
  # The literature's value, and its 18 global minimisers on [-10, 10]².
  assert shubert.minimum == pytest.approx(-186.7309, abs=1e-4)
  assert len(shubert.minimizers) == 18
  assert all(-10 <= c <= 10 for m in shubert.minimizers for c in m)
  with pytest.raises(OptBenchError, match="available"):
    tf.get("himmelblau")


def test_shubert_extremes_are_the_extremes_of_its_factor(x64):
  t = jnp.linspace(-math.pi, math.pi, 200001)
  s = tf._shubert_factor(t)
  assert float(jnp.max(s)) <= tf._S_MAX + 1e-12
  assert float(jnp.min(s)) >= tf._S_MIN - 1e-12
  ds = jax.grad(tf._shubert_factor)
  for arg, value in ((tf._S_ARGMAX, tf._S_MAX), (tf._S_ARGMIN, tf._S_MIN)):
    assert float(tf._shubert_factor(jnp.asarray(arg))) == pytest.approx(
        value, rel=1e-15)
    assert abs(float(ds(jnp.asarray(arg)))) < 1e-12


def test_gradients_match_hand_derivatives(x64):
  rng = np.random.RandomState(0)
  for x, y in rng.uniform(-2, 2, size=(5, 2)):
    xy = jnp.asarray([x, y])
    rosen = [-2 * (1 - x) - 400 * x * (y - x ** 2), 200 * (y - x ** 2)]
    np.testing.assert_allclose(jax.grad(tf.rosenbrock)(xy), rosen,
                               rtol=1e-12)
    terms = [(1.5, 1), (2.25, 2), (2.625, 3)]
    r = [c - x + x * y ** k for c, k in terms]
    beale = [sum(2 * ri * (y ** k - 1) for ri, (_, k) in zip(r, terms)),
             sum(2 * ri * k * x * y ** (k - 1) for ri, (_, k) in zip(r, terms))]
    np.testing.assert_allclose(jax.grad(tf.beale)(xy), beale, rtol=1e-12)
    s = lambda t: sum(i * np.cos((i + 1) * t + i) for i in range(1, 6))
    ds = lambda t: sum(-i * (i + 1) * np.sin((i + 1) * t + i)
                       for i in range(1, 6))
    np.testing.assert_allclose(jax.grad(tf.shubert)(xy),
                               [ds(x) * s(y), s(x) * ds(y)], rtol=1e-10,
                               atol=1e-12)


def test_script_writes_one_png_per_function(tmp_path):
  script = _script()
  status = script.main(["--optimizers", "sgd,adam", "--steps", "5",
                        "--functions", "rosenbrock,shubert",
                        "--learning-rate", "1e-3",
                        "--output-dir", str(tmp_path)])
  assert status == 0
  for name in ("rosenbrock", "shubert"):
    png = (tmp_path / f"{name}.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert set(summary) == {"rosenbrock", "shubert"}
  for runs in summary.values():
    assert set(runs) == {"sgd", "adam"}
    for run in runs.values():
      assert run["status"] == "ok" and run["steps_run"] == 5
  # Five steps of SGD (lr 1e-3) from Rosenbrock's start decrease f.
  assert summary["rosenbrock"]["sgd"]["final_value"] < 24.2


def test_script_skips_kfac_and_reports_divergence():
  script = _script()
  rosenbrock = tf.get("rosenbrock")
  result = script.run_optimizer("kfac", rosenbrock, steps=3)
  assert result["status"] == "skipped" and "kfac_stats" in result["reason"]
  result = script.run_optimizer("sgd", rosenbrock, steps=50,
                                learning_rate=1.0)
  assert result["status"].startswith("diverged")
