r"""A linear-chain conditional random field (Lafferty, McCallum & Pereira
2001), the output layer of the BiLSTM-CRF tagger (Huang, Xu & Yu 2015;
Lample et al. 2016).

Notation. For one sequence of length ``L`` (its real, ``mask = 1`` tokens;
padding is on the right), emissions ``E ∈ R^{T×K}`` (the tagger's Dense
outputs), transitions ``A ∈ R^{K×K}`` (``A[i, j]``: tag ``i`` followed by tag
``j``), start and end scores ``s, e ∈ R^K``:

* score of a tag sequence ``y``:
  ``S(y) = s[y_1] + Σ_{t=1..L} E[t, y_t] + Σ_{t=2..L} A[y_{t-1}, y_t]
  + e[y_L]``;
* partition function, by the forward algorithm in log space:
  ``α_1 = s + E_1``, ``α_t[j] = logsumexp_i(α_{t-1}[i] + A[i, j]) + E_t[j]``,
  ``log Z = logsumexp_j(α_L[j] + e[j])``;
  a padding step carries ``α`` unchanged;
* negative log-likelihood ``nll(y) = log Z − S(y)`` (≥ 0);
* Viterbi (max-product) decoding: ``δ_1 = s + E_1``,
  ``δ_t[j] = max_i(δ_{t-1}[i] + A[i, j]) + E_t[j]`` with back-pointers
  ``ψ_t[j] = argmax_i(·)``, ``y*_L = argmax_j(δ_L[j] + e[j])``,
  ``y*_{t-1} = ψ_t[y*_t]``; the best score is ``max_j(δ_L[j] + e[j])``.

A row without real tokens is the empty sequence: score 0, ``log Z = 0``
(one empty path), hence nll 0 and a zero gradient; Viterbi gives tags 0,
score 0. Padding positions of the decoded tags are 0.

Both recursions are ``jax.lax.scan`` over time, the decoding's backtracking a
reverse scan; everything is jit-able, vmap-able (e.g. over a leading runs
axis) and differentiable in both modes (no custom derivative rules).

Constraints. :func:`allowed_transitions` lists the transitions a tagging
scheme (``"BIO"``, i.e. IOB2, or ``"BIOES"``) permits; forbidden ones are
given a finite penalty of ``−1e4``, so that they are never decoded while the
arithmetic stays finite. As in AllenNLP's ``ConditionalRandomField``, the
:class:`CRF` module applies them when decoding only: the likelihood (and
training) is that of the unconstrained CRF, so gold sequences that break the
scheme (IOB1 data) cost no spurious penalty. The initialisation is
pytorch-crf's: every parameter uniform in ``(−0.1, 0.1)``.
"""
from typing import NamedTuple, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from optbench_jax.errors import OptBenchError

PENALTY = -1e4
SCHEMES = ("BIO", "BIOES")
INIT_BOUND = 0.1


# -- the pure functions -------------------------------------------------------
def _prepare(emissions, mask, transitions, start, end):
  """Inputs in the compute dtype (at least float32) and a boolean mask."""
  floats = [jnp.asarray(x) for x in (emissions, transitions, start, end)]
  dtype = jnp.result_type(*floats, jnp.float32)
  emissions, transitions, start, end = (x.astype(dtype) for x in floats)
  return emissions, jnp.asarray(mask).astype(bool), transitions, start, end


def _time_major(x):
  """``(B, T, ...)`` → ``(T, B, ...)``, the layout ``lax.scan`` walks."""
  return jnp.swapaxes(x, 0, 1)


def sequence_score(emissions, tags, mask, transitions, start, end):
  """``S(y)`` of each row's tags ``(B,)``; 0 for a row without real tokens.

  Args:
    emissions: ``(B, T, K)`` float.
    tags: ``(B, T)`` int; values at padding positions are ignored.
    mask: ``(B, T)``, 1 for real tokens (right padding).
    transitions: ``(K, K)``, ``transitions[i, j]`` scores tag i → tag j.
    start: ``(K,)`` scores of the first tag.
    end: ``(K,)`` scores of the last tag.
  """
  emissions, mask, transitions, start, end = _prepare(
      emissions, mask, transitions, start, end)
  tags = jnp.where(mask, tags, 0)
  real = mask.astype(emissions.dtype)
  emitted = jnp.take_along_axis(emissions, tags[..., None], axis=-1)[..., 0]
  moved = transitions[tags[:, :-1], tags[:, 1:]] * real[:, 1:]
  length = jnp.sum(mask, axis=-1)
  last = jnp.take_along_axis(tags, jnp.maximum(length - 1, 0)[:, None],
                             axis=1)[:, 0]
  score = (start[tags[:, 0]] + jnp.sum(emitted * real, axis=-1)
           + jnp.sum(moved, axis=-1) + end[last])
  return jnp.where(length > 0, score, 0.0)


def log_partition(emissions, mask, transitions, start, end):
  """``log Z`` of each row ``(B,)`` by the forward algorithm; 0 when empty.

  Arguments as :func:`sequence_score` (without tags).
  """
  emissions, mask, transitions, start, end = _prepare(
      emissions, mask, transitions, start, end)

  def step(alpha, inputs):
    emitted, real = inputs
    nxt = jax.nn.logsumexp(alpha[:, :, None] + transitions, axis=1) + emitted
    return jnp.where(real[:, None], nxt, alpha), None

  alpha, _ = jax.lax.scan(step, start + emissions[:, 0],
                          (_time_major(emissions[:, 1:]),
                           _time_major(mask[:, 1:])))
  log_z = jax.nn.logsumexp(alpha + end, axis=-1)
  return jnp.where(jnp.any(mask, axis=-1), log_z, 0.0)


def nll(emissions, tags, mask, transitions, start, end):
  """Negative log-likelihood ``log Z − S(y)`` of each row ``(B,)``.

  Arguments as :func:`sequence_score`; a row without real tokens gives 0.
  """
  params = (transitions, start, end)
  return (log_partition(emissions, mask, *params)
          - sequence_score(emissions, tags, mask, *params))


def viterbi(emissions, mask, transitions, start,
            end) -> Tuple[jnp.ndarray, jnp.ndarray]:
  """The highest-scoring tag sequence of each row and its score.

  Arguments as :func:`log_partition`.

  Returns:
    ``(best_tags, best_score)``: ``(B, T)`` int32 with 0 at padding positions,
    and ``(B,)`` equal to ``sequence_score`` of ``best_tags`` (0 for a row
    without real tokens).
  """
  emissions, mask, transitions, start, end = _prepare(
      emissions, mask, transitions, start, end)
  num_tags = transitions.shape[0]
  stay = jnp.arange(num_tags, dtype=jnp.int32)

  def forward(delta, inputs):
    emitted, real = inputs
    candidates = delta[:, :, None] + transitions
    pointers = jnp.argmax(candidates, axis=1).astype(jnp.int32)
    nxt = jnp.max(candidates, axis=1) + emitted
    # A padding step keeps δ and points every tag at itself.
    return (jnp.where(real[:, None], nxt, delta),
            jnp.where(real[:, None], pointers, stay))

  delta, pointers = jax.lax.scan(forward, start + emissions[:, 0],
                                 (_time_major(emissions[:, 1:]),
                                  _time_major(mask[:, 1:])))
  final = delta + end
  last = jnp.argmax(final, axis=-1).astype(jnp.int32)

  def backward(tag, pointer):
    # ``tag`` is y*_t; emit it and step to y*_{t-1} = ψ_t[y*_t].
    return jnp.take_along_axis(pointer, tag[:, None], axis=1)[:, 0], tag

  first, rest = jax.lax.scan(backward, last, pointers, reverse=True)
  tags = jnp.concatenate([first[:, None], _time_major(rest)], axis=1)
  nonempty = jnp.any(mask, axis=-1)
  return (jnp.where(mask, tags, 0),
          jnp.where(nonempty, jnp.max(final, axis=-1), 0.0))


# -- constraints --------------------------------------------------------------
class Allowed(NamedTuple):
  """Which transitions a tagging scheme permits (nested tuples of bools, so
  that a Flax module can hold them as an attribute).

  Attributes:
    transitions: ``(K, K)``, ``transitions[i][j]``: may tag i precede tag j.
    start: ``(K,)``, may a sequence start with the tag.
    end: ``(K,)``, may a sequence end with the tag.
  """
  transitions: Tuple[Tuple[bool, ...], ...]
  start: Tuple[bool, ...]
  end: Tuple[bool, ...]


def _parse(tag: str, scheme: str) -> Tuple[str, str]:
  """``"B-PER"`` → ``("B", "PER")``; ``"O"`` → ``("O", "")``."""
  if tag == "O":
    return "O", ""
  prefix, _, kind = tag.partition("-")
  if not kind or prefix not in tuple(scheme.replace("O", "")):
    prefixes = "/".join(scheme.replace("O", ""))
    raise OptBenchError(f"tag {tag!r} is not a {scheme} tag: expected O or "
                        f"{prefixes}-TYPE.")
  return prefix, kind


def allowed_transitions(tag_names: Sequence[str],
                        scheme: str = "BIO") -> Allowed:
  """The transitions, first and last tags that ``scheme`` permits.

  * ``"BIO"`` (IOB2): ``I-X`` only after ``B-X`` or ``I-X``; a sequence
    cannot start with ``I-X``; anything may end it.
  * ``"BIOES"``: after ``B-X`` or ``I-X`` only ``I-X`` or ``E-X``; after
    ``O``, ``E-*``, ``S-*`` only ``O``, ``B-*``, ``S-*``; a sequence starts
    with ``O``, ``B-*`` or ``S-*`` and ends with ``O``, ``E-*`` or ``S-*``.

  Args:
    tag_names: the name of each tag id.
    scheme: one of :data:`SCHEMES`.

  Returns:
    An :class:`Allowed`.
  """
  if scheme not in SCHEMES:
    raise OptBenchError(f"unknown tagging scheme {scheme!r}. "
                        f"Valid choices: {', '.join(SCHEMES)}.")
  parsed = [_parse(name, scheme) for name in tag_names]
  inside = ("B", "I") if scheme == "BIOES" else ()
  continues = ("I", "E") if scheme == "BIOES" else ("I",)

  def allowed(a, b):
    (pa, ka), (pb, kb) = a, b
    if pa in inside:  # inside an entity: it must go on
      return pb in continues and kb == ka
    if pb in continues:  # an entity goes on only from inside the same one
      return pa in ("B", "I") and ka == kb
    return True

  return Allowed(
      tuple(tuple(allowed(a, b) for b in parsed) for a in parsed),
      tuple(p not in continues for p, _ in parsed),
      tuple(p not in inside for p, _ in parsed))


def constrain(allowed: Optional[Allowed], transitions, start, end):
  """``(transitions, start, end)`` with :data:`PENALTY` added where
  ``allowed`` forbids; unchanged when ``allowed`` is None."""
  if allowed is None:
    return transitions, start, end
  penalise = lambda x, ok: x + jnp.where(np.asarray(ok, bool), 0.0,
                                         PENALTY).astype(x.dtype)
  return (penalise(transitions, allowed.transitions),
          penalise(start, allowed.start), penalise(end, allowed.end))


# -- the module ---------------------------------------------------------------
class CRF(nn.Module):
  """CRF output layer: parameters ``transitions (K, K)``, ``start (K,)``,
  ``end (K,)``, initialised uniform in ``(−0.1, 0.1)`` (as pytorch-crf).

  Its emissions come from the tagger's own Dense layer. ``constraints``
  (an :class:`Allowed`, optional) apply to :meth:`decode` only.
  """
  num_tags: int
  constraints: Optional[Allowed] = None

  def setup(self):
    init = lambda key, shape, dtype=jnp.float32: jax.random.uniform(
        key, shape, dtype, -INIT_BOUND, INIT_BOUND)
    k = self.num_tags
    self.transitions = self.param("transitions", init, (k, k))
    self.start = self.param("start", init, (k,))
    self.end = self.param("end", init, (k,))

  def nll(self, emissions, tags, mask):
    """Per-sequence negative log-likelihood ``(B,)`` (see :func:`nll`)."""
    return nll(emissions, tags, mask, self.transitions, self.start, self.end)

  def decode(self, emissions, mask):
    """``(best_tags (B, T), best_score (B,))`` under the constraints."""
    return viterbi(emissions, mask, *constrain(
        self.constraints, self.transitions, self.start, self.end))
