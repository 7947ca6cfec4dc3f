"""Fixtures of the data tests."""
import dataclasses

import pytest

from optbench_jax.data import hf as hf_lib


@pytest.fixture
def tiny_copies(monkeypatch):
  """Accepts copies of any split sizes: for tests that write tiny copies of
  real datasets under their real hub ids to test reading them. The check of
  the published sizes is tested in ``test_download.py``."""
  check = hf_lib.HFSource.check_sizes

  def unchecked(self, *args, **kwargs):
    return check(dataclasses.replace(self, sizes={}), *args, **kwargs)

  monkeypatch.setattr(hf_lib.HFSource, "check_sizes", unchecked)
