"""Host-side prefetching: produce items on a thread, a few ahead."""
from __future__ import annotations

import queue
import threading
from typing import Any, Callable

# Batches the streaming pipeline prepares ahead of the device.
PREFETCH = 2


def prefetch(produce: Callable[[int], Any], count: int,
             depth: int = PREFETCH):
  """Yields ``produce(0..count-1)``, computed ``depth`` items ahead.

  A daemon thread runs ``produce`` (host gathering + ``jax.device_put``,
  which is asynchronous) while the caller dispatches device work; an
  exception in the thread is re-raised in the caller.
  """
  items: queue.Queue = queue.Queue(maxsize=depth)
  done = object()

  def work():
    try:
      for i in range(count):
        items.put(produce(i))
    except BaseException as e:  # handed to the consumer
      items.put(e)
    items.put(done)

  thread = threading.Thread(target=work, daemon=True)
  thread.start()
  while True:
    item = items.get()
    if item is done:
      break
    if isinstance(item, BaseException):
      raise item
    yield item
  thread.join()
