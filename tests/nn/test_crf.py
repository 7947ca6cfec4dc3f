"""The linear-chain CRF against brute-force enumeration of all K^L tag
sequences (float64, 1e-10), masking, gradients, jit/vmap/jvp, constraints,
and pytorch-crf when it is importable."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optbench_jax.nn import crf

K, T = 3, 4
LENGTHS = (4, 3, 1, 2)
BIO = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC")


def _problem(seed, lengths=LENGTHS, k=K, t=T, scale=1.0):
  """Random emissions, tags, right-padded mask and parameters (float64)."""
  rng = np.random.default_rng(seed)
  b = len(lengths)
  mask = (np.arange(t)[None] < np.asarray(lengths)[:, None]).astype(np.int32)
  return dict(emissions=scale * rng.normal(size=(b, t, k)),
              tags=rng.integers(0, k, (b, t)), mask=mask,
              transitions=scale * rng.normal(size=(k, k)),
              start=scale * rng.normal(size=k), end=scale * rng.normal(size=k))


def _params(p):
  return p["transitions"], p["start"], p["end"]


# Compiled once per shape (eager, every call compiles its scans again);
# test_jit_and_vmap_over_runs_equal_eager compares them with eager calls.
jitted = {name: jax.jit(getattr(crf, name))
          for name in ("log_partition", "sequence_score", "viterbi", "nll")}


def _path_score(e, y, transitions, start, end):
  """S(y) of one unpadded sequence, written out term by term."""
  s = start[y[0]] + end[y[-1]] + sum(e[t, y[t]] for t in range(len(y)))
  return s + sum(transitions[y[t - 1], y[t]] for t in range(1, len(y)))


def _brute_force(p):
  """Per row: log Z, the best path and its score, by enumeration."""
  out = []
  for e, m in zip(p["emissions"], p["mask"]):
    n = int(m.sum())
    paths = list(itertools.product(range(e.shape[-1]), repeat=n))
    scores = np.array([_path_score(e[:n], y, *_params(p)) for y in paths])
    best = int(np.argmax(scores))
    top = scores.max()
    out.append((top + np.log(np.sum(np.exp(scores - top))), paths[best],
                scores[best]))
  return out


def test_log_partition_score_and_viterbi_equal_brute_force(x64):
  for seed in range(3):
    p = _problem(seed)
    want = _brute_force(p)
    log_z = jitted["log_partition"](p["emissions"], p["mask"], *_params(p))
    score = jitted["sequence_score"](p["emissions"], p["tags"], p["mask"],
                                     *_params(p))
    tags, best = jitted["viterbi"](p["emissions"], p["mask"], *_params(p))
    assert log_z.dtype == jnp.float64
    for i, (z, path, top) in enumerate(want):
      n = LENGTHS[i]
      assert abs(float(log_z[i]) - z) < 1e-10
      assert abs(float(score[i]) - _path_score(
          p["emissions"][i, :n], p["tags"][i, :n], *_params(p))) < 1e-10
      assert tuple(np.asarray(tags[i, :n])) == path
      assert np.all(np.asarray(tags[i, n:]) == 0)
      assert abs(float(best[i]) - top) < 1e-10
    nll = jitted["nll"](p["emissions"], p["tags"], p["mask"], *_params(p))
    np.testing.assert_allclose(nll, log_z - score, rtol=0, atol=1e-12)
    assert np.all(np.asarray(nll) >= 0)


def test_padding_changes_nothing_and_empty_rows_give_zero(x64):
  p = _problem(3)
  rng = np.random.default_rng(4)
  extra = 3  # garbage emissions and out-of-range tags in the padding
  padded = dict(p,
                emissions=np.concatenate(
                    [p["emissions"], 50 * rng.normal(size=(4, extra, K))], 1),
                tags=np.concatenate([p["tags"], np.full((4, extra), -1)], 1),
                mask=np.concatenate([p["mask"], np.zeros((4, extra), int)], 1))
  # Garbage in the padding of the original too.
  p["emissions"] = np.where(p["mask"][..., None] > 0, p["emissions"], 1e3)
  for q in (p, padded):
    q["nll"] = jitted["nll"](q["emissions"], q["tags"], q["mask"],
                             *_params(q))
    q["tags_best"], q["best"] = jitted["viterbi"](q["emissions"], q["mask"],
                                                  *_params(q))
  np.testing.assert_allclose(padded["nll"], p["nll"], rtol=0, atol=1e-12)
  np.testing.assert_allclose(padded["best"], p["best"], rtol=0, atol=1e-12)
  np.testing.assert_array_equal(padded["tags_best"][:, :T], p["tags_best"])
  assert np.all(np.asarray(padded["tags_best"][:, T:]) == 0)

  # A row without real tokens: nll 0, tags 0, score 0, gradients finite.
  empty = dict(p, mask=p["mask"] * np.array([[1], [1], [0], [1]]))
  value = jitted["nll"](empty["emissions"], empty["tags"], empty["mask"],
                        *_params(empty))
  assert float(value[2]) == 0.0 and np.all(np.isfinite(value))
  tags, best = jitted["viterbi"](empty["emissions"], empty["mask"],
                                 *_params(empty))
  assert np.all(np.asarray(tags[2]) == 0) and float(best[2]) == 0.0
  grads = jax.jit(jax.grad(lambda e, *ps: jnp.mean(crf.nll(
      e, empty["tags"], empty["mask"], *ps)), argnums=(0, 1, 2, 3)))(
          empty["emissions"], *_params(empty))
  assert all(np.all(np.isfinite(g)) for g in grads)
  assert np.all(np.asarray(grads[0][2]) == 0)


def test_gradients_are_marginals_and_forward_mode_works(x64):
  p = _problem(5)
  mean_nll = lambda e, *ps: jnp.mean(crf.nll(e, p["tags"], p["mask"], *ps))
  grads = jax.grad(mean_nll, argnums=(0, 1, 2, 3))(p["emissions"],
                                                    *_params(p))
  assert all(np.all(np.isfinite(g)) for g in grads)
  # ∂ log Z / ∂ E[t] is the marginal of position t: sums to 1 where real.
  marginals = jax.grad(lambda e: jnp.sum(crf.log_partition(
      e, p["mask"], *_params(p))))(p["emissions"])
  np.testing.assert_allclose(np.sum(marginals, -1), p["mask"], atol=1e-12)
  assert np.all(np.asarray(marginals) >= 0)
  # Forward mode (no custom_vjp) agrees with reverse mode.
  direction = np.random.default_rng(6).normal(size=p["emissions"].shape)
  _, tangent = jax.jvp(lambda e: mean_nll(e, *_params(p)),
                       (p["emissions"],), (direction,))
  np.testing.assert_allclose(tangent, np.sum(grads[0] * direction),
                             rtol=1e-10)


def test_jit_and_vmap_over_runs_equal_eager():
  p = _problem(7)
  args = {k: jnp.asarray(v, jnp.float32 if v.dtype == np.float64 else None)
          for k, v in p.items()}

  def both(e, transitions, start, end):
    value = crf.nll(e, args["tags"], args["mask"], transitions, start, end)
    return value, crf.viterbi(e, args["mask"], transitions, start, end)

  params = (args["transitions"], args["start"], args["end"])
  eager = both(args["emissions"], *params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6),
               jax.jit(both)(args["emissions"], *params), eager)
  # A leading runs axis: run r has emissions and parameters scaled by 1 + r.
  runs = jnp.arange(1.0, 3.0)
  batched = jax.jit(jax.vmap(both))(
      *(runs.reshape((2,) + (1,) * x.ndim) * x
        for x in (args["emissions"],) + params))
  for r in range(2):
    single = both(*((1.0 + r) * x for x in (args["emissions"],) + params))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a[r], b, rtol=1e-5),
                 batched, single)


def test_bio_and_bioes_constraints():
  allowed = crf.allowed_transitions(BIO)
  a = np.asarray(allowed.transitions)
  assert a[1, 2] and a[2, 2] and not a[3, 2] and not a[0, 2] and a[2, 3]
  assert not a[1, 4] and a[3, 4] and a[0, 1] and a[2, 0]
  np.testing.assert_array_equal(allowed.start, [1, 1, 0, 1, 0])
  assert all(allowed.end)
  bioes = crf.allowed_transitions(("O", "B-X", "I-X", "E-X", "S-X"), "BIOES")
  np.testing.assert_array_equal(bioes.transitions, [[1, 1, 0, 0, 1],
                                                    [0, 0, 1, 1, 0],
                                                    [0, 0, 1, 1, 0],
                                                    [1, 1, 0, 0, 1],
                                                    [1, 1, 0, 0, 1]])
  np.testing.assert_array_equal(bioes.start, [1, 1, 0, 0, 1])
  np.testing.assert_array_equal(bioes.end, [1, 0, 0, 1, 1])
  with pytest.raises(crf.OptBenchError):
    crf.allowed_transitions(("O", "E-X"), "BIO")

  # Decoding never uses a forbidden transition, first or last tag, even
  # when the unconstrained optimum would.
  model = crf.CRF(len(BIO), constraints=allowed)
  p = _problem(8, lengths=(6, 5, 3, 1, 6, 2), k=len(BIO), t=6, scale=3.0)
  variables = {"params": {"transitions": jnp.asarray(p["transitions"]),
                          "start": jnp.asarray(p["start"]),
                          "end": jnp.asarray(p["end"])}}
  tags, _ = jax.jit(model.apply, static_argnames="method")(
      variables, p["emissions"], p["mask"], method="decode")
  free, _ = crf.viterbi(p["emissions"], p["mask"], *_params(p))
  for path, free_path, n in zip(np.asarray(tags), np.asarray(free),
                                p["mask"].sum(1)):
    assert allowed.start[path[0]]
    assert all(a[i, j] for i, j in zip(path[:n - 1], path[1:n]))
  assert any(not allowed.start[f[0]] or not all(
      a[i, j] for i, j in zip(f[:n - 1], f[1:n]))
             for f, n in zip(np.asarray(free), p["mask"].sum(1)))


def test_module_parameters_and_likelihood_without_constraints():
  k = len(BIO)
  model = crf.CRF(k, constraints=crf.allowed_transitions(BIO))
  p = _problem(9, k=k)
  variables = model.init(jax.random.PRNGKey(0), p["emissions"], p["tags"],
                         p["mask"], method="nll")
  params = variables["params"]
  assert {n: v.shape for n, v in params.items()} == {
      "transitions": (k, k), "start": (k,), "end": (k,)}
  assert all(np.all(np.abs(v) < 0.1) for v in params.values())
  hash(model)  # a Flax attribute: hashable
  got = model.apply(variables, p["emissions"], p["tags"], p["mask"],
                    method="nll")
  want = crf.nll(p["emissions"], p["tags"], p["mask"], params["transitions"],
                 params["start"], params["end"])
  np.testing.assert_allclose(got, want, rtol=1e-6)


def test_equals_pytorch_crf(x64):
  torchcrf = pytest.importorskip("torchcrf")
  import torch  # pylint: disable=import-outside-toplevel
  p = _problem(10)
  ref = torchcrf.CRF(K, batch_first=True).double()
  with torch.no_grad():
    ref.transitions.copy_(torch.tensor(p["transitions"]))
    ref.start_transitions.copy_(torch.tensor(p["start"]))
    ref.end_transitions.copy_(torch.tensor(p["end"]))
  emissions, tags = torch.tensor(p["emissions"]), torch.tensor(p["tags"])
  mask = torch.tensor(p["mask"]).bool()
  want = -ref(emissions, tags, mask, reduction="none").numpy()
  got = crf.nll(p["emissions"], p["tags"], p["mask"], *_params(p))
  np.testing.assert_allclose(got, want, rtol=1e-10)
  decoded, _ = crf.viterbi(p["emissions"], p["mask"], *_params(p))
  for path, ours, n in zip(ref.decode(emissions, mask), np.asarray(decoded),
                           LENGTHS):
    assert list(ours[:n]) == path
