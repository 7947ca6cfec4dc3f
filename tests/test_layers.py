"""The package's layers: a module imports only its own layer and those below.

Read statically (``ast``), so function-level imports count too and nothing
is imported. The order is the one ``docs/design/index.md`` describes.
"""
import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "optbench_jax"

# Lowest first; one rank may hold several packages that never import each
# other upwards.
LAYERS = (
    ("errors",),
    ("registry", "xla_cpu", "store", "flags"),
    ("kernels",),
    ("nn", "data"),
    ("transforms", "models"),
    ("tasks",),
    ("workload", "reference"),
    ("engine",),
    ("train",),
    ("analysis",),
    ("campaign",),
    ("cli",),
    ("experiment",),
)
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}
TOP = ("__init__", "__main__")


def _imports(path: pathlib.Path):
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.ImportFrom) and node.module:
      if node.module == "optbench_jax":
        yield from (alias.name for alias in node.names)
      elif node.module.startswith("optbench_jax."):
        yield node.module.split(".")[1]
    elif isinstance(node, ast.Import):
      yield from (alias.name.split(".")[1] for alias in node.names
                  if alias.name.startswith("optbench_jax."))


def _layer_of(path: pathlib.Path) -> str:
  return path.relative_to(PACKAGE).with_suffix("").parts[0]


def test_every_top_level_module_has_a_layer():
  names = {_layer_of(p) for p in PACKAGE.rglob("*.py")} - set(TOP)
  assert names == set(RANK), (
      f"give these a layer in LAYERS: {sorted(names - set(RANK))}; "
      f"gone: {sorted(set(RANK) - names)}")


@pytest.mark.parametrize("layer", sorted(RANK))
def test_imports_go_down(layer):
  upward = []
  for path in sorted(PACKAGE.rglob("*.py")):
    if _layer_of(path) != layer:
      continue
    for imported in _imports(path):
      if imported in RANK and imported != layer and (
          RANK[imported] >= RANK[layer]):
        upward.append(f"{path.relative_to(PACKAGE.parent)} imports "
                      f"optbench_jax.{imported}")
  assert not upward, "\n".join(upward)
