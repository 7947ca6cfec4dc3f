"""Shared test fixtures."""
import os
import shutil
import tempfile

# Tests run on the CPU with deterministic settings, whatever the machine has.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# One persistent XLA cache for the session: identical programs (resumed runs,
# repeated seeds) compile once, and nothing leaks between test sessions. The
# process that creates it (pytest's, whose xdist workers and subprocesses
# inherit it) removes it when the session ends.
_OWN_CACHE = None
if "OPTBENCH_COMPILE_CACHE" not in os.environ:
  _OWN_CACHE = tempfile.mkdtemp(prefix="optbench-xla-")
  os.environ["OPTBENCH_COMPILE_CACHE"] = _OWN_CACHE

import jax  # noqa: E402
import pytest  # noqa: E402

from optbench_jax.campaign import runner  # noqa: E402

# ... used from the first test on, for every program: one compiled again by
# a later test (a model's initialisation, a task's evaluation, a CRF) is
# loaded, not compiled (the same executable: results are unchanged).
runner.CACHE_MIN_COMPILE_TIME_S = 0.0
runner.enable_compile_cache(os.environ["OPTBENCH_COMPILE_CACHE"])

# torchvision (test extra) is built for CUDA torch: on the CPU build its
# extension cannot load and its import fails, also when ``transformers``
# imports it. Its model code needs none of the extension's operators;
# define their schemas once, before any test imports it.
try:
  from optbench_jax.reference import torchvision_models  # imports torch
except ImportError:
  pass
else:
  torchvision_models.define_missing_operators()


@pytest.fixture
def x64():
  """Runs the test with float64 enabled (and restores float32 afterwards)."""
  with jax.enable_x64(True):
    yield


def pytest_sessionfinish(session, exitstatus):
  del session, exitstatus
  if _OWN_CACHE is not None:
    shutil.rmtree(_OWN_CACHE, ignore_errors=True)
