"""The engine: everything compiled, and what it needs of the devices.

``program`` (the compiled :class:`~optbench_jax.engine.program.Program` of
R ≥ 1 runs: train step, scanned and streamed epochs, PRNG schedule,
ahead-of-time compilation), ``evaluation``, ``epoch`` (batches and metrics
accumulated on the device), ``state``, ``optimizer`` (clipping and the
injected learning rate around a registry optimizer), ``schedules``,
``precision``, ``streaming`` (host prefetch), ``memory`` and
``distributed`` (mesh, processes). Task- and optimizer-agnostic; it reads
no file and writes none — the host's side of runs is
:mod:`optbench_jax.train`.
"""
