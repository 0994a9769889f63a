"""The Sinkhorn solver of Feature Scattering's optimal transport (`agkd_tf.core.ot`): the cosine cost,
uniform marginals, brute force and NumPy on 3x3, and gradients through the iterations."""

import itertools

import numpy as np
import pytest
import tensorflow as tf

from agkd_tf.core import ot


def test_cosine_cost_matches_numpy():
  rng = np.random.RandomState(0)
  x, y = rng.randn(4, 5).astype(np.float32), rng.randn(3, 5).astype(np.float32)
  x[1] = -y[2]  # Opposite vectors: 1 - cos = 2.
  cos = (x @ y.T) / np.linalg.norm(x, axis=1)[:, None] / np.linalg.norm(y, axis=1)[None, :]
  np.testing.assert_allclose(ot.cosine_cost(x, y).numpy(), np.maximum(0, 1 - cos), atol=1e-6)
  assert abs(float(ot.cosine_cost(x, y)[1, 2]) - 2.0) < 1e-6


_sinkhorn = tf.function(ot.sinkhorn_plan)  # Eager while loops of 1000s of steps are slow.


@pytest.mark.parametrize('b', [6, 60])
def test_sinkhorn_plan_has_uniform_marginals(b):
  cost = ot.cosine_cost(*np.random.RandomState(b).randn(2, b, 10).astype(np.float32))
  # Run to convergence: both marginals are 1/B.
  plan = _sinkhorn(cost, threshold=1e-7, max_iterations=5000).numpy()
  np.testing.assert_allclose(plan.sum(1), 1 / b, rtol=1e-3)
  np.testing.assert_allclose(plan.sum(0), 1 / b, rtol=1e-3)
  # The official stopping rule: v is updated last, so the columns are exact. The rows are only
  # as close as sum |u - u_prev| < 0.1 makes them, which is loose (up to 50% off at B = 60).
  plan = _sinkhorn(cost).numpy()
  assert (plan >= 0).all()
  np.testing.assert_allclose(plan.sum(0), 1 / b, rtol=1e-4)
  np.testing.assert_allclose(plan.sum(), 1.0, rtol=1e-4)
  row_error = np.abs(plan.sum(1) * b - 1)
  assert row_error.mean() < 0.25 and row_error.max() < 1.0


def test_sinkhorn_matches_brute_force_and_numpy_on_3x3():
  cost = np.array([[0.9, 0.1, 0.7], [0.2, 0.8, 0.6], [0.5, 0.6, 0.05]], np.float32)
  # Brute force over the 3! transport plans between uniform marginals that are permutations:
  # at entropy 0.01 the plan is, to within rounding, the cheapest permutation over 3.
  best = min(itertools.permutations(range(3)), key=lambda p: sum(cost[i, p[i]] for i in range(3)))
  plan = _sinkhorn(cost, threshold=1e-7, max_iterations=5000).numpy()
  want = np.zeros((3, 3))
  want[np.arange(3), best] = 1 / 3
  np.testing.assert_allclose(plan, want, atol=1e-3)
  # At a larger entropy the plan is dense: check it against exp-domain Sinkhorn-Knopp in NumPy.
  kernel = np.exp(-cost.astype(np.float64) / 0.5)
  a = np.ones(3)
  for _ in range(2000):
    b = (1 / 3) / (kernel.T @ a)
    a = (1 / 3) / (kernel @ b)
  plan = _sinkhorn(cost, entropy=0.5, threshold=1e-8, max_iterations=5000).numpy()
  np.testing.assert_allclose(plan, a[:, None] * kernel * b[None, :], atol=1e-5)


def test_gradient_flows_through_the_sinkhorn_iterations():
  rng = np.random.RandomState(1)
  x = tf.constant(rng.randn(8, 5).astype(np.float32))
  y = tf.Variable(rng.randn(8, 5).astype(np.float32))

  @tf.function
  def grads():
    with tf.GradientTape(persistent=True) as tape:
      through = ot.transport_cost(x, y)
      cost = ot.cosine_cost(x, y)
      frozen = tf.reduce_sum(tf.stop_gradient(ot.sinkhorn_plan(cost)) * cost)
    return tape.gradient(through, y), tape.gradient(frozen, y)

  g, g_frozen = (t.numpy() for t in grads())
  assert np.isfinite(g).all() and np.abs(g).max() > 1e-4
  # The plan's own gradient contributes: differentiating through T is not the frozen-plan one.
  assert np.abs(g - g_frozen).max() > 1e-4 * np.abs(g).max()
