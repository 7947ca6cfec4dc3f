"""The parts of ``benchmarks/step_speed.py``.

``variants``: what is timed, as a table; ``workload``: the random data and
the model of one benchmark entry; ``jax_timing``: every call into the
engine; ``torch_timing``: the PyTorch twin; ``device``: device description,
peak FLOP/s and MFU; ``projection``: the campaign projection; ``report``:
the printed table and the JSON.
"""
