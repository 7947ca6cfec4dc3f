"""Every optimizer's search space (issue 24): valid, sourced, sampled
quasi-randomly, and every sampled point builds the optimizer."""
import math

import jax.numpy as jnp
import numpy as np
import pytest

from optbench_jax import transforms
from optbench_jax.transforms import search

PARAMS = {"w": jnp.ones((3, 2)), "b": jnp.zeros((2,))}


def _inside(dim, value):
  if isinstance(dim, search.Choice):
    return value in dim.values
  x = 1.0 - value if dim.one_minus else value
  return dim.low * (1 - 1e-12) <= x <= dim.high * (1 + 1e-12)


@pytest.mark.parametrize("name", list(transforms.available()))
def test_every_sampled_point_is_in_the_space_and_builds(name):
  spec = transforms.get(name)
  space = spec.search_space
  assert "learning_rate" in space
  assert all(dim.source for dim in space.values())
  points = search.sample(space, 4, seed=0)
  assert len(points) == 4
  for point in points:
    assert set(point) == set(space)
    for key, value in point.items():
      assert _inside(space[key], value), (key, value)
    keywords = {k: v for k, v in point.items()
                if k not in ("learning_rate", "weight_decay")}
    tx = transforms.make(name, point["learning_rate"],
                         weight_decay=point.get("weight_decay"), **keywords)
    tx.init(PARAMS)


def test_published_spaces_are_algoperfs():
  """As published in mlcommons/algorithmic-efficiency's
  reference_algorithms/paper_baselines/*/tuning_search_space.json."""
  def bounds(name):
    return {k: (d.low, d.high, d.scale, d.one_minus)
            for k, d in transforms.get(name).search_space.items()}
  assert bounds("adamw") == {"learning_rate": (1e-4, 1e-2, "log", False),
                             "b1": (2e-2, 0.5, "log", True),
                             "weight_decay": (5e-3, 1.0, "log", False)}
  assert bounds("lamb") == {"learning_rate": (1e-4, 1e-2, "log", False),
                            "b1": (5e-2, 0.3, "log", True),
                            "weight_decay": (1e-3, 1.0, "log", False)}
  assert bounds("nesterov") == {"learning_rate": (2e-2, 5.0, "log", False),
                                "momentum": (5e-3, 0.3, "log", True),
                                "weight_decay": (1e-7, 5e-5, "log", False)}
  sam = transforms.get("sam").search_space
  assert sam["rho"].values == (0.01, 0.02, 0.05)
  assert "paper_baselines/sam/" in sam["rho"].source
  # An entry without a published space: a decade around its default.
  adam = transforms.get("adam").search_space
  assert list(adam) == ["learning_rate"]
  assert (adam["learning_rate"].low, adam["learning_rate"].high) == (
      pytest.approx(1e-4), pytest.approx(1e-2))


def test_halton_points_are_stratified_and_reproducible():
  """Eight scrambled Halton points of a 1-D log range fall one in each of
  eight equal log-bins (independent draws would leave some empty); the
  sequence depends on the seed only."""
  space = {"learning_rate": search.Range(1e-5, 1e-1, "log", "test")}
  points = [p["learning_rate"] for p in search.sample(space, 8, seed=3)]
  bins = sorted(int((math.log10(x) + 5) / 4 * 8) for x in points)
  assert bins == list(range(8))
  assert points == [p["learning_rate"]
                    for p in search.sample(space, 8, seed=3)]
  assert points != [p["learning_rate"]
                    for p in search.sample(space, 8, seed=4)]
  choice = {"rho": search.Choice((0.01, 0.02, 0.05), "test")}
  drawn = [p["rho"] for p in search.sample(choice, 9, seed=0)]
  assert sorted(np.unique(drawn, return_counts=True)[1]) == [3, 3, 3]


@pytest.mark.parametrize("space, takes_decay, message", [
    ({"b1": search.Range(0.1, 0.5, "log", "s")}, True, "no learning_rate"),
    ({"learning_rate": search.Range(1e-3, 1e-1, "log", "s"),
      "beta9": search.Range(0.1, 0.5, "log", "s")}, True,
     "'beta9' is not a keyword"),
    ({"learning_rate": search.Range(1e-3, 1e-1, "log", "s"),
      "weight_decay": search.Range(1e-3, 1e-1, "log", "s")}, False,
     "searches weight_decay"),
])
def test_bad_spaces_are_refused(space, takes_decay, message):
  with pytest.raises(ValueError, match=message):
    search.check("opt", space, ["b1", "b2"], takes_decay)


@pytest.mark.parametrize("args, message", [
    ((0.0, 1.0, "log"), "log range needs low > 0"),
    ((1.0, 1.0, "linear"), "is empty"),
    ((1e-3, 1e-1, "cubic"), "scale 'cubic'"),
])
def test_bad_ranges_are_refused(args, message):
  with pytest.raises(ValueError, match=message):
    search.Range(*args, source="s")
