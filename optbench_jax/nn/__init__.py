"""Shared neural-network building blocks of the models.

Layers with the project's initialisation schemes and curvature capture
(:mod:`.layers`, :mod:`.curvature`), attention and transformer layers
(:mod:`.attention`), recurrent layers (:mod:`.recurrent`), the linear-chain
CRF (:mod:`.crf`), autoregressive decoding (:mod:`.decoding`), the
PyTorch ``state_dict`` <-> Flax weight conversion (:mod:`.convert`) and the
Lanczos iteration that measures Hessians (:mod:`.lanczos`, used by the
engine's sharpness tracking and by ``analysis``). The
model families (the ``models`` package, above this one) are built from
these; this package imports no model, and no torch.
"""
