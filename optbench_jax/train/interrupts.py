"""Interruptions (Ctrl-C, a scheduler's SIGTERM) that never land inside a
checkpoint write.

The command line installs :func:`request_stop` for SIGINT and SIGTERM. It
raises ``KeyboardInterrupt`` at once (the run stops, ``--resume`` continues
it), except inside :func:`critical` sections — Orbax checkpoint writes —
where it is deferred to the section's end, so that a checkpoint is either
written whole or not at all and Orbax's threads are not torn down mid-write.
"""
from __future__ import annotations

import contextlib

_state = {"depth": 0, "pending": False}


def request_stop(signum=None, frame=None) -> None:
  """Signal handler: interrupt now, or at the end of a critical section."""
  del signum, frame
  if _state["depth"]:
    _state["pending"] = True
    return
  raise KeyboardInterrupt


@contextlib.contextmanager
def critical():
  """A section that an interruption waits for (e.g. a checkpoint write)."""
  _state["depth"] += 1
  try:
    yield
  finally:
    _state["depth"] -= 1
  if not _state["depth"] and _state["pending"]:
    _state["pending"] = False
    raise KeyboardInterrupt
