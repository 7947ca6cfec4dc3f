"""Greedy and beam search against numpy references on toy step functions:
a position-dependent Markov model (counters in the cache) and a model whose
next-token distribution depends on the whole prefix through a running hash
in the cache (tests the beam reordering). Beam search is also checked
against exhaustive enumeration, under jit and vmap over a runs axis, and for
its early exit."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optbench_jax.nn import decoding

PAD, EOS, BOS = 0, 1, 2
HASH_ROWS = 1009


def _log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


# --- Toy models: a jax step function and the numpy log p(. | prefix) -------

def _markov(seed, v=6, length=5, eos_bias=0.0):
  """Tables of a Markov model with a position-dependent bias; PAD is never
  emitted (log-probability -inf)."""
  rng = np.random.default_rng(seed)
  table = 2.0 * rng.normal(size=(v, v))
  table[:, PAD] = -np.inf
  bias = rng.normal(size=(length, v))
  bias[:, EOS] += eos_bias
  return dict(table=table.astype(np.float32), bias=bias.astype(np.float32))


def _markov_step(p, record=None):
  """logits = table[previous token] + bias[position], the position read
  from a per-row counter and a shared (rank-0) counter in the cache."""
  def step(cache, tokens, position):
    if record is not None:
      jax.debug.callback(lambda q: record.append(int(q)), position)
    half = 0.5 * jnp.asarray(p["bias"])
    logits = (jnp.asarray(p["table"])[tokens] + half[cache["count"]]
              + half[cache["shared"]])
    cache = dict(count=cache["count"] + 1, shared=cache["shared"] + 1)
    return jax.nn.log_softmax(logits), cache
  return step


def _markov_cache(batch):
  return dict(count=jnp.zeros((batch,), jnp.int32), shared=jnp.int32(0))


def _markov_np(p):
  def log_probs(b, prefix):
    del b
    return _log_softmax(p["table"][prefix[-1]].astype(np.float64)
                        + p["bias"][len(prefix) - 1])
  return log_probs


def _hash_step(table):
  """log p depends on the whole prefix, through a running hash kept in the
  cache, plus a per-example memory (tiled to the beams)."""
  def step(cache, tokens, position):
    del position
    h = (cache["hash"] * 31 + tokens + 1) % HASH_ROWS
    logits = table[h] + cache["memory"]
    return jax.nn.log_softmax(logits), dict(hash=h, memory=cache["memory"])
  return step


def _hash_problem(seed, batch, v):
  rng = np.random.default_rng(seed)
  table = (2.0 * rng.normal(size=(HASH_ROWS, v))).astype(np.float32)
  memory = rng.normal(size=(batch, v)).astype(np.float32)

  def log_probs(b, prefix):
    h = 0
    for token in prefix:
      h = (h * 31 + token + 1) % HASH_ROWS
    return _log_softmax(table[h].astype(np.float64) + memory[b])

  cache = dict(hash=jnp.zeros((batch,), jnp.int32), memory=jnp.asarray(memory))
  return _hash_step(jnp.asarray(table)), cache, log_probs


# --- numpy references --------------------------------------------------------

def _penalty(n, alpha):
  return ((5.0 + n) / 6.0) ** alpha


def _np_greedy(log_probs, batch, length):
  out = np.full((batch, length), PAD)
  for b in range(batch):
    prefix = (BOS,)
    for t in range(length):
      out[b, t] = int(np.argmax(log_probs(b, prefix)))
      prefix += (out[b, t],)
      if out[b, t] == EOS:
        break
  return out


def _pad(seq, length):
  return np.array(list(seq) + [PAD] * (length - len(seq)))


def _np_beam(log_probs, b, k, length, alpha, v):
  """Beam search written out: the step's beam is the K best candidates; its
  EOS members go to the pool, the K best non-EOS ones stay live."""
  live, finished = [((), 0.0)], []
  for t in range(length):
    cands = [(seq + (w,), lp + log_probs(b, (BOS,) + seq)[w])
             for seq, lp in live for w in range(v)]
    cands = sorted((c for c in cands if c[1] > -np.inf), key=lambda c: -c[1])
    finished += [(seq, lp / _penalty(t + 1, alpha)) for seq, lp in cands[:k]
                 if seq[-1] == EOS]
    finished = sorted(finished, key=lambda c: -c[1])[:k]
    live = [c for c in cands if c[0][-1] != EOS][:k]
  if finished:
    return _pad(finished[0][0], length), finished[0][1]
  return _pad(live[0][0], length), live[0][1] / _penalty(length, alpha)


def _np_exhaustive(log_probs, b, length, alpha, v):
  """The best complete hypothesis: every y = (w_1 .. w_{n-1}, EOS), n ≤ L."""
  best = (None, -np.inf)
  words = [w for w in range(v) if w != EOS]
  for n in range(1, length + 1):
    for body in itertools.product(words, repeat=n - 1):
      y = body + (EOS,)
      lp = sum(log_probs(b, (BOS,) + y[:i])[y[i]] for i in range(n))
      if lp / _penalty(n, alpha) > best[1]:
        best = (y, lp / _penalty(n, alpha))
  return _pad(best[0], length), best[1]


def _beam(step, cache, batch, k, length, alpha):
  fn = jax.jit(lambda c: decoding.beam_search(
      step, c, batch, beam_size=k, bos_id=BOS, eos_id=EOS, pad_id=PAD,
      max_length=length, length_penalty=alpha))
  return jax.tree.map(np.asarray, fn(cache))


def _greedy(step, cache, batch, length):
  fn = jax.jit(lambda c: decoding.greedy_search(
      step, c, batch, bos_id=BOS, eos_id=EOS, pad_id=PAD, max_length=length))
  return np.asarray(fn(cache))


def _check_beam(got, want):
  tokens, scores = got
  for b, (seq, score) in enumerate(want):
    np.testing.assert_array_equal(tokens[b], seq)
    np.testing.assert_allclose(scores[b], score, rtol=1e-5)


# --- Tests -------------------------------------------------------------------

def test_greedy_equals_a_numpy_greedy_loop():
  batch, length = 3, 5
  for seed in range(4):
    p = _markov(seed, length=length)
    got = _greedy(_markov_step(p), _markov_cache(batch), batch, length)
    np.testing.assert_array_equal(
        got, _np_greedy(_markov_np(p), batch, length))


@pytest.mark.parametrize("alpha", [0.0, 0.6, 1.0])
def test_beam_search_finds_the_best_hypothesis_by_enumeration(alpha):
  # K = 64 · 5 candidates at the last step: the beam is never pruned.
  v, length, k = 5, 4, 320
  p = _markov(3, v=v, length=length)
  got = _beam(_markov_step(p), _markov_cache(1), 1, k, length, alpha)
  _check_beam(got, [_np_exhaustive(_markov_np(p), 0, length, alpha, v)])


@pytest.mark.parametrize("k", [1, 2, 3])
def test_beam_search_equals_a_numpy_beam_search(k):
  batch, length, v = 3, 5, 6
  for seed in range(2):
    p = _markov(seed, v=v, length=length)
    got = _beam(_markov_step(p), _markov_cache(batch), batch, k, length, 0.6)
    _check_beam(got, [_np_beam(_markov_np(p), b, k, length, 0.6, v)
                      for b in range(batch)])


def test_beam_size_one_is_greedy_without_length_penalty():
  batch, length = 4, 6
  for seed in range(4):
    p = _markov(10 + seed, length=length)
    tokens, _ = _beam(_markov_step(p), _markov_cache(batch), batch, 1,
                      length, 0.0)
    np.testing.assert_array_equal(
        tokens, _greedy(_markov_step(p), _markov_cache(batch), batch, length))


def test_rows_end_at_their_first_eos_and_are_padded_after():
  batch, length = 8, 6
  p = _markov(5, length=length, eos_bias=1.0)
  outputs = [_greedy(_markov_step(p), _markov_cache(batch), batch, length),
             _beam(_markov_step(p), _markov_cache(batch), batch, 2, length,
                   0.6)[0]]
  for tokens in outputs:
    assert tokens.shape == (batch, length) and tokens.dtype == np.int32
    ended = 0
    for row in tokens:
      n = list(row).index(EOS) + 1 if EOS in row else length
      ended += n < length
      assert np.all(row[n:] == PAD) and np.all(row[:n] != PAD)
      assert np.all(row[:n - 1] != EOS)
    assert ended > 0  # some rows stopped before max_length


def test_early_exit_skips_the_remaining_steps_without_changing_the_result():
  batch, length, v = 3, 8, 6
  # Greedy: EOS dominates from position 2 on, so every row ends by then.
  p = _markov(6, v=v, length=length)
  p["bias"][2:, EOS] += 20.0
  seen = []
  got = _greedy(_markov_step(p, seen), _markov_cache(batch), batch, length)
  jax.effects_barrier()
  np.testing.assert_array_equal(got, _np_greedy(_markov_np(p), batch, length))
  assert max(seen) == 2
  # Beam: EOS has probability ~0.99, so the pool fills with short
  # hypotheses that no live beam (log p ≈ 2 log 0.002) can beat.
  p = _markov(7, v=v, length=length, eos_bias=8.0)
  seen = []
  got = _beam(_markov_step(p, seen), _markov_cache(batch), batch, 2, length,
              0.6)
  jax.effects_barrier()
  _check_beam(got, [_np_beam(_markov_np(p), b, 2, length, 0.6, v)
                    for b in range(batch)])
  assert max(seen) < length - 1


def test_cache_reordering_matches_recomputing_from_the_prefix():
  batch, length, v = 3, 6, 5
  for seed in range(2):
    step, cache, log_probs = _hash_problem(seed, batch, v)
    np.testing.assert_array_equal(_greedy(step, cache, batch, length),
                                  _np_greedy(log_probs, batch, length))
    for k in (2, 4):
      got = _beam(step, cache, batch, k, length, 0.6)
      _check_beam(got, [_np_beam(log_probs, b, k, length, 0.6, v)
                        for b in range(batch)])


def test_decoding_vmaps_over_a_runs_axis():
  runs, batch, length, v, k = 3, 2, 5, 6, 2
  ps = [_markov(20 + r, v=v, length=length, eos_bias=0.5 * r)
        for r in range(runs)]
  stacked = jax.tree.map(lambda *x: jnp.stack(x), *ps)

  def decode(p):
    step = _markov_step(p)
    greedy = decoding.greedy_search(step, _markov_cache(batch), batch,
                                    bos_id=BOS, eos_id=EOS, pad_id=PAD,
                                    max_length=length)
    beam = decoding.beam_search(step, _markov_cache(batch), batch,
                                beam_size=k, bos_id=BOS, eos_id=EOS,
                                pad_id=PAD, max_length=length)
    return greedy, beam

  greedy, (tokens, scores) = jax.jit(jax.vmap(decode))(stacked)
  for r, p in enumerate(ps):
    g, (t, s) = jax.jit(decode)(p)
    np.testing.assert_array_equal(greedy[r], g)
    np.testing.assert_array_equal(tokens[r], t)
    np.testing.assert_allclose(scores[r], s, rtol=1e-6)
    np.testing.assert_array_equal(g, _np_greedy(_markov_np(p), batch, length))
    _check_beam((t, s), [_np_beam(_markov_np(p), b, k, length, 0.6, v)
                         for b in range(batch)])
