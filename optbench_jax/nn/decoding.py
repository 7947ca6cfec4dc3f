r"""Model-agnostic autoregressive decoding: greedy and beam search.

The model is seen only through a step function::

  step_fn(cache, tokens, position) -> (log_probs, cache)

``tokens`` ``(N,)`` int32 holds the last emitted token of each of the ``N``
hypotheses, ``position`` (a scalar int32) its index in the output (0 for
BOS), ``cache`` is any pytree whose leaves have a leading axis ``N`` (a
key/value cache, an LSTM state, the encoder memory and its mask); leaves of
rank 0 (a shared counter such as the attention cache's ``cache_index``) are
carried along, never tiled nor reordered. ``log_probs`` ``(N, V)`` are the
*normalised* log-probabilities ``log p(y_{t+1} | y_{≤t}, x)`` of the next
token (a ``log_softmax``; beam search's early exit relies on them being
``≤ 0``).

Outputs are the tokens after BOS (BOS excluded), ``(B, max_length)`` int32:
a hypothesis ends with its first EOS, which is kept, and ``pad_id`` follows.

Greedy search: ``y_{t+1} = argmax_v log p(v | y_{≤t}, x)`` until EOS or
``max_length`` tokens; the loop stops as soon as every row has finished.

Beam search (Graves 2012, arXiv:1211.3711; Sutskever, Vinyals & Le 2014,
arXiv:1409.3215) with ``K`` beams and GNMT's length normalisation (Wu et al.
2016, arXiv:1609.08144, eq. 14)::

  s(y) = log p(y | x) / lp(|y|),   lp(n) = ((5 + n) / 6)^α

where ``|y|`` counts the generated tokens, EOS included, and ``α =
length_penalty`` (``α = 0``: the raw log-probability). At step ``t`` each of
the ``K`` live beams ``h`` (``log p(h)``, length ``t``) is extended by every
token ``v``: ``c(h, v) = log p(h) + log p(v | h, x)``. Of these ``K·V``
candidates,

* the ``K`` best by ``c`` form the step's beam; its members ending in EOS
  enter the pool of finished hypotheses with score ``c / lp(t + 1)``, and the
  pool keeps its ``K`` best scores (earlier entries first on ties);
* the ``K`` best candidates *not* ending in EOS become the new live beams,
  so live beams never extend past EOS and there are always ``K`` of them.

With ``K = 1`` and ``α = 0`` this is greedy search. An example is done when
its pool is full and no live beam can enter it: since ``log p ≤ 0`` only
decreases along a beam, a finished descendant of beam ``h`` (length ``n``,
``t < n ≤ L``) scores at most ``log p(h) / max(lp(t + 1), lp(L))``; once the
best such bound is not above the pool's worst score the result cannot change,
and the loop stops when every example is done (or after ``L = max_length``
steps). The answer is the pool's best hypothesis, or, when nothing finished
within ``L`` tokens, the best live beam with score ``log p / lp(L)``.

The cache given has leading axis ``B``; it is tiled to ``B·K`` (row ``b·K +
k`` is beam ``k`` of example ``b``, the flattened batch×beam layout of Flax's
``examples/wmt/decode.py``) and reordered after each step by gathering along
axis 0. Everything is ``lax.while_loop`` over fixed shapes: jit-able and
vmap-able (e.g. over a leading runs axis).
"""
from typing import Any, Callable, NamedTuple, Tuple

import jax
import jax.numpy as jnp

StepFn = Callable[[Any, jax.Array, jax.Array], Tuple[jax.Array, Any]]


def gnmt_length_penalty(length, alpha):
  """GNMT's ``lp(n) = ((5 + n) / 6)^α`` (Wu et al. 2016, eq. 14)."""
  return ((5.0 + jnp.asarray(length, jnp.float32)) / 6.0) ** alpha


def _map_batched(fn, cache):
  """Applies ``fn`` to the cache leaves with a leading axis (rank ≥ 1)."""
  return jax.tree.map(lambda x: x if jnp.ndim(x) == 0 else fn(x), cache)


class _GreedyState(NamedTuple):
  step: jax.Array      # number of tokens emitted so far
  tokens: jax.Array    # (B, L) output, pad_id where not written
  last: jax.Array      # (B,) last token (BOS at first)
  done: jax.Array      # (B,) row has emitted EOS
  cache: Any


def greedy_search(step_fn: StepFn, cache, batch_size: int, *, bos_id: int,
                  eos_id: int, pad_id: int = 0,
                  max_length: int) -> jax.Array:
  """Greedy decoding; returns the tokens after BOS, ``(B, max_length)``."""
  b = batch_size

  def cond(s):
    return (s.step < max_length) & ~jnp.all(s.done)

  def body(s):
    log_probs, cache = step_fn(s.cache, s.last, s.step)
    nxt = jnp.argmax(log_probs, axis=-1).astype(jnp.int32)
    nxt = jnp.where(s.done, pad_id, nxt)
    tokens = s.tokens.at[:, s.step].set(nxt)
    return _GreedyState(s.step + 1, tokens, nxt, s.done | (nxt == eos_id),
                        cache)

  init = _GreedyState(jnp.int32(0),
                      jnp.full((b, max_length), pad_id, jnp.int32),
                      jnp.full((b,), bos_id, jnp.int32),
                      jnp.zeros((b,), bool), cache)
  return jax.lax.while_loop(cond, body, init).tokens


class _BeamState(NamedTuple):
  step: jax.Array          # t: length of the live beams
  live_seqs: jax.Array     # (B, K, L)
  live_logp: jax.Array     # (B, K) log p(h), sorted descending
  finished_seqs: jax.Array  # (B, K, L)
  finished_scores: jax.Array  # (B, K) s(y), -inf for an empty slot
  cache: Any               # leaves (B·K, ...)


def beam_search(step_fn: StepFn, cache, batch_size: int, *, beam_size: int,
                bos_id: int, eos_id: int, pad_id: int = 0, max_length: int,
                length_penalty: float = 0.6
                ) -> Tuple[jax.Array, jax.Array]:
  """Beam search; returns the best hypothesis per example and its score.

  Returns ``tokens`` ``(B, max_length)`` int32 and ``scores`` ``(B,)``
  float32, ``s(y) = log p(y | x) / lp(|y|)`` (module docstring).
  """
  b, k, length = batch_size, beam_size, max_length
  alpha = length_penalty
  lp = gnmt_length_penalty
  neg_inf = jnp.float32(-jnp.inf)
  flat = jnp.arange(b)[:, None] * k  # (B, 1): row of beam 0 of each example

  def gather(x, beams):  # x (B, K, ...), beams (B, K') -> (B, K', ...)
    return jnp.take_along_axis(
        x, beams.reshape(beams.shape + (1,) * (x.ndim - 2)), axis=1)

  def done(s):
    bound = s.live_logp[:, 0] / jnp.maximum(lp(s.step + 1, alpha),
                                            lp(length, alpha))
    full = jnp.all(s.finished_scores > neg_inf, axis=1)
    return full & (bound <= s.finished_scores[:, -1])

  def cond(s):
    return (s.step < length) & ~jnp.all(done(s))

  def body(s):
    t = s.step
    last = jnp.where(t == 0, bos_id,
                     s.live_seqs[:, :, jnp.maximum(t - 1, 0)])
    log_probs, cache = step_fn(s.cache, last.reshape(b * k), t)
    v = log_probs.shape[-1]
    cand = (s.live_logp[:, :, None]
            + log_probs.astype(jnp.float32).reshape(b, k, v)).reshape(b, -1)
    # The step's beam: its EOS members enter the pool of finished ones.
    top_logp, top_idx = jax.lax.top_k(cand, k)
    new_seqs = gather(s.live_seqs, top_idx // v).at[:, :, t].set(eos_id)
    new_scores = jnp.where(top_idx % v == eos_id,
                           top_logp / lp(t + 1, alpha), neg_inf)
    pool_scores = jnp.concatenate([s.finished_scores, new_scores], axis=1)
    pool_seqs = jnp.concatenate([s.finished_seqs, new_seqs], axis=1)
    finished_scores, keep = jax.lax.top_k(pool_scores, k)
    # The live beams: the best K candidates that do not end in EOS.
    cand = cand.reshape(b, k, v).at[:, :, eos_id].set(neg_inf)
    live_logp, live_idx = jax.lax.top_k(cand.reshape(b, -1), k)
    beams = live_idx // v
    live_seqs = gather(s.live_seqs, beams).at[:, :, t].set(live_idx % v)
    rows = (flat + beams).reshape(-1)
    cache = _map_batched(lambda x: x[rows], cache)
    return _BeamState(t + 1, live_seqs, live_logp, gather(pool_seqs, keep),
                      finished_scores, cache)

  init = _BeamState(
      jnp.int32(0),
      jnp.full((b, k, length), pad_id, jnp.int32),
      # Only beam 0 is live at first: the K copies of BOS are one hypothesis.
      jnp.tile(jnp.where(jnp.arange(k) == 0, 0.0, neg_inf), (b, 1)),
      jnp.full((b, k, length), pad_id, jnp.int32),
      jnp.full((b, k), neg_inf),
      _map_batched(lambda x: jnp.repeat(x, k, axis=0), cache))
  s = jax.lax.while_loop(cond, body, init)
  any_finished = s.finished_scores[:, 0] > neg_inf
  tokens = jnp.where(any_finished[:, None], s.finished_seqs[:, 0],
                     s.live_seqs[:, 0])
  scores = jnp.where(any_finished, s.finished_scores[:, 0],
                     s.live_logp[:, 0] / lp(length, alpha))
  return tokens, scores
