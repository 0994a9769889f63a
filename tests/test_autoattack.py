"""Tests of the native AutoAttack (Croce & Hein, ICML 2020).

Schedules and losses are checked against the official formulas, FAB's box-constrained projection
against linear programming, the attacks against the closed-form minimal L-inf perturbation of
linear models, and the whole pipeline on a tiny conv net (few iterations: what is tested there
are the invariants, not the strength).
"""

import math

import numpy as np
import pytest
import tensorflow as tf

from agkd_tf.attacks import autoattack as aa
from agkd_tf.attacks.autoattack import common
from tests import helpers

EPS = 0.05


# ---------------------------------------------------------------- APGD step-size schedule


def test_select_rows_equals_the_broadcast_select_and_keeps_static_shapes():
  a = tf.random.stateless_uniform((5, 4, 4, 3), (0, 1))
  b = tf.random.stateless_uniform((5, 4, 4, 3), (0, 2))
  cond = tf.constant([True, False, False, True, False])
  want = tf.where(tf.reshape(cond, [-1, 1, 1, 1]), a, b)
  np.testing.assert_array_equal(common.select_rows(cond, a, b), want)

  images = tf.TensorSpec([None, 4, 4, 3], tf.float32)

  @tf.function(input_signature=[tf.TensorSpec([None], tf.bool), images, images])
  def traced(c, x, z):
    out = common.select_rows(c, x, z)
    assert out.shape.as_list() == [None, 4, 4, 3]  # A while_loop variable keeps its shape.
    return out

  np.testing.assert_array_equal(traced(cond, a, b), want)


def test_apgd_checkpoints_for_100_iterations_match_the_paper():
  assert aa.checkpoints(100) == (22, 41, 57, 70, 80, 87, 93, 99)
  # The paper's p_j: p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06).
  p = [0.0, 0.22]
  while p[-1] + max(p[-1] - p[-2] - 0.03, 0.06) <= 1.0:
    p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
  assert tuple(math.ceil(round(q * 100, 6)) for q in p[1:]) == aa.checkpoints(100)
  # The window of each check is the number of steps since the previous one.
  assert [k for _, k in aa.checkpoint_schedule(100)] == [22, 19, 16, 13, 10, 7, 6, 6]


def test_step_size_decision_follows_both_conditions():
  # Window of 22 steps: halve iff the loss increased in at most 0.75 * 22 = 16.5 of them.
  n_increase = tf.constant([16.0, 17.0, 22.0, 22.0, 0.0])
  loss_best = tf.constant([1.0, 1.0, 1.0, 2.0, 1.0])
  last_best = tf.constant([0.5, 0.5, 1.0, 1.0, 1.0])
  reduced_last = tf.constant([False, False, False, False, True])
  got = aa.step_size_decision(n_increase, 22, loss_best, last_best, reduced_last).numpy()
  # 16 <= 16.5: oscillation. 17: none, and the best loss improved. Third: no oscillation, but not
  # halved last time and best loss unchanged: stalled. Fourth: improved. Fifth: oscillation.
  np.testing.assert_array_equal(got, [True, False, True, False, True])
  # Halved at the last checkpoint: a stalled best loss alone does not halve again.
  got = aa.step_size_decision(tf.constant([22.0]), 22, tf.constant([1.0]), tf.constant([1.0]),
                              tf.constant([True])).numpy()
  np.testing.assert_array_equal(got, [False])
  # The threshold is inclusive: 3 increases in a window of 4 is exactly 75%.
  got = aa.step_size_decision(tf.constant([3.0, 4.0]), 4, tf.constant([2.0, 2.0]),
                              tf.constant([1.0, 1.0]), tf.constant([True, True])).numpy()
  np.testing.assert_array_equal(got, [True, False])


def test_apgd_halves_the_step_exactly_where_the_loss_does_not_increase():
  # A model whose logit gap grows with every call: the CE loss of class 0 increases at every
  # step (never halve), the CE loss of class 1 decreases at every step (halve at all 8 checks).
  calls = tf.Variable(0.0)

  def model_fn(x):
    t = calls.assign_add(1.0)
    gap = 0.05 * t + tf.reduce_sum(x, axis=[1, 2, 3])
    return tf.stack([tf.zeros_like(gap), gap], axis=1)

  x = tf.fill([2, 2, 2, 1], 0.5)
  res = aa.apgd_single_run(model_fn, x, tf.constant([0, 1]), EPS, n_iter=100, loss='ce',
                           seed=common.make_seed(0))
  np.testing.assert_allclose(res.step_size.numpy(), [2 * EPS, 2 * EPS / 2**8], rtol=1e-6)


def _apgd_reference(loss_grad, x, x_init, eps, n_iter, rho=0.75):
  """The official L-inf `attack_single_run`, transcribed loop by loop into NumPy."""
  proj = lambda z: np.clip(np.minimum(np.maximum(z, x - eps), x + eps), 0.0, 1.0)
  x_adv = np.clip(x_init, 0.0, 1.0)
  x_best, x_best_adv = x_adv.copy(), x_adv.copy()
  loss, ok, grad = loss_grad(x_adv)
  grad_best, acc, loss_best = grad.copy(), ok.copy(), loss.copy()
  loss_steps = np.zeros([n_iter, len(x)], x.dtype)
  step = np.full(len(x), 2 * eps, x.dtype)[:, None]
  x_adv_old = x_adv.copy()
  k, k_min, k_decr = max(int(0.22 * n_iter), 1), max(int(0.06 * n_iter), 1), max(
      int(0.03 * n_iter), 1)
  counter3 = 0
  loss_best_last_check, reduced_last_check = loss_best.copy(), np.ones(len(x), bool)
  for i in range(n_iter):
    grad2 = x_adv - x_adv_old
    x_adv_old = x_adv.copy()
    a = 0.75 if i > 0 else 1.0
    x1 = proj(x_adv + step * np.sign(grad))
    x_adv = proj(x_adv + (x1 - x_adv) * a + grad2 * (1 - a))
    loss, ok, grad = loss_grad(x_adv)
    acc &= ok
    x_best_adv[~ok] = x_adv[~ok]
    loss_steps[i] = loss
    ind = loss > loss_best
    x_best[ind], grad_best[ind], loss_best[ind] = x_adv[ind], grad[ind], loss[ind]
    counter3 += 1
    if counter3 == k:
      # Python's index -1 at the first check reads the last, still zero, row: kept as is.
      t = sum((loss_steps[i - c] > loss_steps[i - c - 1]).astype(int) for c in range(k))
      fl = (t <= k * rho) | (~reduced_last_check & (loss_best_last_check >= loss_best))
      reduced_last_check, loss_best_last_check = fl.copy(), loss_best.copy()
      step[fl] /= 2.0
      x_adv[fl], grad[fl] = x_best[fl], grad_best[fl]
      k = max(k - k_decr, k_min)
      counter3 = 0
  return x_best_adv, acc, x_best, loss_best, step[:, 0]


def test_apgd_matches_a_numpy_transcription_of_the_official_loop():
  # Logits [0, u(x)] with u = sum_i a_i sin(b_i x_i) + c: a bumpy CE loss (softplus(u) for
  # class 0) where the iterates oscillate, halve their steps and restart from their best points.
  rng = np.random.RandomState(0)
  a = rng.uniform(0.5, 1.5, 4).astype(np.float32)
  f = rng.uniform(20.0, 40.0, 4).astype(np.float32)
  c = np.float32(-3.5)

  def loss_grad(z):
    u = (a * np.sin(f * z)).sum(1) + c
    loss = np.logaddexp(0.0, u).astype(np.float32)
    grad = (1 / (1 + np.exp(-u)))[:, None] * a * f * np.cos(f * z)
    return loss, u <= 0, grad.astype(np.float32)

  def model_fn(images):
    z = tf.reshape(images, [-1, 4])
    u = tf.reduce_sum(a * tf.sin(f * z), axis=1) + c
    return tf.stack([tf.zeros_like(u), u], axis=1)

  x = rng.uniform(0.3, 0.7, [6, 4]).astype(np.float32)
  x_init = np.clip(x + rng.uniform(-0.1, 0.1, x.shape), 0, 1).astype(np.float32)
  eps, n_iter = 0.1, 30
  ref = _apgd_reference(loss_grad, x, x_init, eps, n_iter)
  res = aa.apgd_single_run(model_fn, x.reshape(6, 2, 2, 1), np.zeros(6, np.int32), eps,
                           n_iter=n_iter, x_init=x_init.reshape(6, 2, 2, 1))
  np.testing.assert_allclose(res.x_adv.numpy().reshape(6, 4), ref[0], atol=1e-5)
  np.testing.assert_array_equal(res.robust.numpy(), ref[1])
  np.testing.assert_allclose(res.x_best.numpy().reshape(6, 4), ref[2], atol=1e-5)
  np.testing.assert_allclose(res.loss_best.numpy(), ref[3], rtol=1e-5)
  np.testing.assert_allclose(res.step_size.numpy(), ref[4], rtol=1e-6)
  # The case exercises what it should: several step sizes, some points fooled, some not.
  assert len(set(ref[4])) > 1 and 0 < ref[1].sum() < 6


# ---------------------------------------------------------------- losses


def _dlr_numpy(z, y):
  out = []
  for zi, yi in zip(z, y):
    s = np.sort(zi)[::-1]
    other = np.max(np.delete(zi, yi))
    out.append(-(zi[yi] - other) / (s[0] - s[2] + 1e-12))
  return np.array(out)


def _dlr_targeted_numpy(z, y, t):
  out = []
  for zi, yi, ti in zip(z, y, t):
    s = np.sort(zi)[::-1]
    out.append(-(zi[yi] - zi[ti]) / (s[0] - 0.5 * (s[2] + s[3]) + 1e-12))
  return np.array(out)


def test_dlr_losses_match_numpy():
  z = np.array([[1.0, 3.0, 2.0, 0.5, -1.0],   # y not the top class
                [4.0, 1.0, 2.0, 3.0, 0.0],    # y the top class
                [0.0, 0.0, 1.0, 2.0, 5.0],
                [2.0, -3.0, 7.0, 1.0, 1.5]], np.float32)
  y = np.array([2, 0, 4, 1])
  t = np.array([1, 3, 0, 2])
  np.testing.assert_allclose(aa.dlr_loss(z, y).numpy(), _dlr_numpy(z, y), rtol=1e-6)
  np.testing.assert_allclose(aa.dlr_loss_targeted(z, y, t).numpy(), _dlr_targeted_numpy(z, y, t),
                             rtol=1e-6)
  # Hand-computed: row 1, y = 0 is the top class: -(4 - 3) / (4 - 2) = -0.5.
  assert abs(float(aa.dlr_loss(z, y)[1]) + 0.5) < 1e-6


# ---------------------------------------------------------------- FAB projection


def test_fab_projection_matches_linear_programming():
  linprog = pytest.importorskip('scipy.optimize').linprog
  rng = np.random.RandomState(0)
  n_feasible = n_infeasible = 0
  for d in (2, 3, 4):
    n = 60
    t = rng.uniform(0, 1, [n, d])
    w = rng.normal(size=[n, d])
    w[rng.uniform(size=[n, d]) < 0.15] = 0.0  # Some coordinates the hyperplane ignores.
    b = np.sum(w * t, 1) + rng.normal(size=n) * np.abs(w).sum(1) * 0.4
    delta = aa.projection_linf(t.astype(np.float32), w.astype(np.float32),
                               b.astype(np.float32)).numpy().astype(np.float64)
    for i in range(n):
      # min r s.t. |delta_j| <= r, <w, t + delta> = b, 0 <= t + delta <= 1.
      c = np.zeros(d + 1)
      c[-1] = 1.0
      a_ub = np.concatenate([np.concatenate([np.eye(d), -np.ones([d, 1])], 1),
                             np.concatenate([-np.eye(d), -np.ones([d, 1])], 1)])
      lp = linprog(c, A_ub=a_ub, b_ub=np.zeros(2 * d), A_eq=np.append(w[i], 0.0)[None],
                   b_eq=[b[i] - w[i] @ t[i]],
                   bounds=[(-t[i, j], 1 - t[i, j]) for j in range(d)] + [(0, None)],
                   method='highs')
      z = t[i] + delta[i]
      assert np.all(z >= -1e-6) and np.all(z <= 1 + 1e-6)
      if lp.status == 0:
        n_feasible += 1
        assert abs(np.abs(delta[i]).max() - lp.fun) < 1e-5, (d, i, delta[i], lp.x)
        assert abs(w[i] @ z - b[i]) < 1e-4
      else:
        # The hyperplane misses the box: the corner that comes closest to it.
        n_infeasible += 1
        up = b[i] > w[i] @ t[i]
        corner = np.where(w[i] > 0, float(up), float(not up))
        expected = np.where(w[i] != 0, corner - t[i], 0.0)
        np.testing.assert_allclose(delta[i], expected, atol=1e-6)
  assert n_feasible > 100 and n_infeasible > 5


def test_fab_projection_is_the_same_whichever_way_ties_of_rooms_are_ranked(monkeypatch):
  # Images on the 1/255 grid (and the box edges) give many equal rooms: the host sort ranks ties
  # in another order than the device's stable sort, which must not change the step.
  from agkd_tf.attacks.autoattack import fab  # pylint: disable=g-import-not-at-top
  rng = np.random.RandomState(1)
  t = (rng.randint(0, 256, [40, 300]) / 255.0).astype(np.float32)
  w = rng.normal(size=[40, 300]).astype(np.float32)
  w[:, :20] = 0.0
  b = (np.sum(w * t, 1) + rng.normal(size=40) * 3.0).astype(np.float32)
  room = np.minimum(t, 1.0 - t)
  room_s, abs_ws = fab.sorted_by_room(tf.constant(room), tf.constant(np.abs(w)))
  room_s, abs_ws = room_s.numpy(), abs_ws.numpy()
  assert np.all(np.diff(room_s, axis=1) <= 0)
  for i in range(40):  # The same (room, |w|) pairs, permuted together.
    assert sorted(zip(room_s[i], abs_ws[i])) == sorted(zip(room[i], np.abs(w[i])))
  host = aa.projection_linf(t, w, b).numpy()
  monkeypatch.setattr(fab.tf.config, 'list_logical_devices', lambda kind=None: ['device'])
  device = aa.projection_linf(t, w, b).numpy()
  np.testing.assert_allclose(host, device, atol=1e-5)
  assert np.abs(host).max() > 0.01  # Real steps, not all zeros.


# ---------------------------------------------------------------- Square schedule


def test_square_p_schedule_matches_the_official_p_selection():
  its = [0, 10, 11, 50, 51, 200, 201, 500, 501, 1000, 1001, 2000, 2001, 4000, 4001, 4999]
  expected = [0.8, 0.8, 0.4, 0.4, 0.2, 0.2, 0.1, 0.1, 0.05, 0.05, 0.025, 0.025, 0.0125, 0.0125,
              0.00625, 0.00625]
  got = [float(aa.p_selection(i)) for i in its]
  np.testing.assert_allclose(got, expected, rtol=1e-12)
  # The official resc_schedule (off in AutoAttack): with 5000 queries every change comes twice as
  # early, e.g. after query 5 instead of 10.
  got = [float(aa.p_selection(i, n_queries=5000, rescale_schedule=True)) for i in (5, 6, 25, 26)]
  np.testing.assert_allclose(got, [0.8, 0.4, 0.4, 0.2], rtol=1e-12)
  # Side of the square on 32x32 images: max(round(sqrt(p * 1024)), 1).
  sides = [int(aa.square_side(p, 32, 32)) for p in expected[::2]]
  assert sides == [29, 20, 14, 10, 7, 5, 4, 3]


def test_square_never_moves_the_last_row_and_column_as_the_official_code():
  # The margin is the sum of one row and one column. The official offset draw
  # (random_int(0, H - s)) never places a square at the last offset: on the second-to-last
  # row and column Square reaches the optimum (every pixel at x - eps), on the last ones the
  # initial vertical stripes stay untouched.
  def run(line):
    weight = np.zeros([8, 8, 1], np.float32)
    weight[line, :, :] = 1.0
    weight[:, line, :] = 1.0
    wt = tf.constant(weight)

    def model_fn(images):
      score = tf.reduce_sum(images * wt, axis=[1, 2, 3])
      return tf.stack([score, tf.zeros_like(score)], axis=1)

    best = aa.square_single_run(model_fn, tf.fill([3, 8, 8, 1], 0.5), tf.zeros([3], tf.int32),
                                EPS, n_queries=1500, seed=common.make_seed(0)).numpy()
    return np.round((best - 0.5) / EPS, 4)

  delta = run(6)
  assert np.all(delta[:, 6, :7] == -1.0) and np.all(delta[:, :7, 6] == -1.0)
  delta = run(7)
  # Nothing improves the margin, so no proposal is accepted anywhere: the stripes remain, one
  # sign per column, and both signs occur.
  np.testing.assert_array_equal(delta, np.repeat(delta[:, :1], 8, axis=1))
  assert set(np.unique(delta[:, 7])) == {-1.0, 1.0}


# ---------------------------------------------------------------- linear models


def _linear_problem(num_classes, seed, bias_scale=0.0, n_each=10):
  """A linear model on 8x8x1 images and points with known minimal L-inf distances.

  The last image row and column carry no weight: Square, as the official code, never puts a
  square at the last offset, so those pixels keep their initial stripe signs; with zero weight
  there the closed form below is also what Square can reach.

  Returns:
    model_fn, x, y, dist where dist is the minimal L-inf distance to the decision boundary,
    min_j (z_y - z_j) / ||w_y - w_j||_1 (the box does not bind: points lie in [0.3, 0.7] and
    the distances that matter are below 3 eps).
  """
  rng = np.random.RandomState(seed)
  mask = np.ones([8, 8, 1], np.float32)
  mask[-1, :, :] = 0.0
  mask[:, -1, :] = 0.0
  w = rng.normal(size=[64, num_classes]).astype(np.float32) * mask.reshape(64, 1)
  # Centre the classes on the middle grey; a spread of the biases makes margins larger.
  b = -(0.5 * np.ones(64, np.float32) @ w)
  b = b + rng.normal(size=num_classes).astype(np.float32) * bias_scale
  x = rng.uniform(0.3, 0.7, [4000, 64]).astype(np.float32)
  z = x @ w + b
  y = z.argmax(1)
  gaps = z[np.arange(len(x)), y][:, None] - z
  norms = np.abs(w[:, y].T[:, None, :] - w.T[None]).sum(-1)  # [N, K]: ||w_y - w_j||_1
  norms[np.arange(len(x)), y] = 1.0
  gaps[np.arange(len(x)), y] = np.inf
  dist = (gaps / norms).min(1)
  ratio = dist / EPS
  fooled = np.flatnonzero((ratio > 0.3) & (ratio < 0.9))[:n_each]
  robust = np.flatnonzero((ratio > 1.1) & (ratio < 3.0))[:n_each]
  assert len(fooled) == n_each and len(robust) == n_each
  keep = np.concatenate([fooled, robust])
  wt, bt = tf.constant(w), tf.constant(b)

  def model_fn(images):
    return tf.matmul(tf.reshape(images, [-1, 64]), wt) + bt

  return model_fn, x[keep].reshape(-1, 8, 8, 1), y[keep].astype(np.int32), dist[keep]


def _check_flips(model_fn, x, y, dist, adv):
  adv = np.asarray(adv)
  assert np.abs(adv - x).max() <= EPS + 1e-6
  assert adv.min() >= 0.0 and adv.max() <= 1.0
  flipped = common.predict(model_fn, adv).numpy() != y
  np.testing.assert_array_equal(flipped, dist < EPS)


def test_apgd_ce_flips_exactly_the_non_robust_points_of_a_linear_model():
  model_fn, x, y, dist = _linear_problem(2, seed=1)
  adv = aa.apgd_attack(model_fn, x, y, EPS, n_iter=10, loss='ce', seed=0)
  _check_flips(model_fn, x, y, dist, adv)


def _fab_distance_on_a_line(n_iter, eta=1.05, beta=0.9, alpha_max=0.1):
  """FAB's best distance, in units of the minimal one, when the boundary is a hyperplane.

  Every iterate then lies on the segment from x0 along the minimal perturbation: at fraction p
  of it, the projection of x1 has norm |1 - p|, that of x0 norm 1.
  """
  p, best = 0.0, np.inf
  for _ in range(n_iter):
    alpha = min(max(abs(1 - p) / (abs(1 - p) + 1), 0.0), alpha_max)
    p = (p + eta * (1 - p)) * (1 - alpha) + eta * alpha
    if p > 1:
      best = min(best, p)
      p *= beta
  return best


def test_fab_finds_the_minimal_linf_perturbation_of_a_linear_model():
  model_fn, x, y, dist = _linear_problem(2, seed=2)
  order = common.descending_order(common.logits(model_fn, x))
  adv, found = aa.fab_single_run(model_fn, x, y, EPS, targeted=True, y_target=order[:, 1],
                                 n_iter=30)
  # On a linear model the projections are exact, so FAB's steps (overshoot eta, weight alpha
  # capped at alpha_max, backward step beta) land at a known multiple of the minimal distance:
  # just beyond it (1.0052 with the official constants).
  ratio = _fab_distance_on_a_line(30)
  assert 1.0 < ratio < 1.01
  np.testing.assert_allclose(found.numpy(), dist * ratio, rtol=1e-4)
  assert np.all(common.predict(model_fn, adv).numpy() != y)
  _check_flips(model_fn, x, y, dist, aa.fab_attack(model_fn, x, y, EPS, targeted=True, n_iter=30))


def test_square_flips_exactly_the_non_robust_points_of_a_linear_model():
  model_fn, x, y, dist = _linear_problem(2, seed=3)
  adv = aa.square_attack(model_fn, x, y, EPS, n_queries=2000, seed=0)
  _check_flips(model_fn, x, y, dist, adv)
  # Seeded: the same seed gives the same images.
  again = aa.square_attack(model_fn, x, y, EPS, n_queries=2000, seed=0)
  np.testing.assert_array_equal(adv.numpy(), again.numpy())


def test_targeted_attacks_on_a_ten_class_linear_model():
  model_fn, x, y, dist = _linear_problem(10, seed=4, bias_scale=3.0)
  # FAB-T with all 9 other classes as targets is exact on a linear model.
  _check_flips(model_fn, x, y, dist, aa.fab_attack(model_fn, x, y, EPS, targeted=True, n_iter=30))
  # APGD-T ascends the targeted DLR ratio, not the margin itself: it must never flip a robust
  # point, and flips the non-robust ones.
  adv = aa.apgd_targeted(model_fn, x, y, EPS, n_iter=20, seed=0)
  _check_flips(model_fn, x, y, dist, adv)


# ---------------------------------------------------------------- the pipeline


def test_autoattack_pipeline_on_a_tiny_conv_net():
  network = helpers.dense_network(input_shape=(8, 8, 3), num_classes=10, seed=3)

  def model_fn(images):
    # The untrained net's logits are nearly equal, where CE is maximised by flattening them
    # rather than by crossing a boundary; a temperature makes APGD-CE effective.
    return 20.0 * network(images, training=False)['logits']

  rng = np.random.RandomState(0)
  x = rng.uniform(0, 1, [24, 8, 8, 3]).astype(np.float32)
  pred = common.predict(model_fn, x).numpy()
  y = pred.copy()
  wrong = np.arange(0, 24, 3)  # A third start misclassified.
  y[wrong] = (pred[wrong] + 1) % 10
  # The minimal L-inf distances FAB finds for these points are 0.09 to 0.17: at this eps some
  # points fall and some survive.
  eps = 0.13
  messages = []
  attack = aa.AutoAttack(model_fn, eps, seed=0, log=messages.append, n_iter=10, n_queries=100)
  x_adv, report = attack.run(x, y, batch_size=10)

  names = ['apgd-ce', 'apgd-t', 'fab-t', 'square']
  assert report['attacks'] == names
  assert list(report['robust_accuracy']) == ['clean'] + names
  assert set(report['flipped']) == set(report['attacked']) == set(report['time_s']) == set(names)
  assert report['clean_accuracy'] == pytest.approx(16 / 24)
  # Initially misclassified points are never attacked and come back untouched.
  assert report['attacked']['apgd-ce'] == 16
  np.testing.assert_array_equal(x_adv[wrong], x[wrong])
  # Each attack runs on exactly the points the previous ones left robust.
  for prev, cur in zip(names, names[1:]):
    assert report['attacked'][cur] == report['attacked'][prev] - report['flipped'][prev]
  accs = [report['robust_accuracy'][k] for k in ['clean'] + names]
  assert all(a >= b for a, b in zip(accs, accs[1:]))
  assert sum(report['flipped'].values()) == 16 - round(accs[-1] * 24)
  assert report['flipped']['apgd-ce'] > 0
  # The adversarial images are valid and the accuracy on them is the reported one.
  assert np.abs(x_adv - x).max() <= eps + 1e-6 and report['max_perturbation'] <= eps + 1e-6
  assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
  adv_pred = common.predict(model_fn, x_adv).numpy()
  assert np.mean(adv_pred == y) == pytest.approx(accs[-1])
  assert report['final_robust_accuracy'] == pytest.approx(accs[-1])
  assert np.mean(adv_pred == y) <= report['clean_accuracy']
  # The only possible warning here: Square succeeding after the white-box attacks.
  square_warned = [w for w in report['warnings'] if 'Square' in w]
  assert len(square_warned) == (report['flipped']['square'] > 0)
  assert len(report['warnings']) == len(square_warned)
  assert any('robust accuracy after SQUARE' in m for m in messages)


def test_every_attack_runs_on_a_single_robust_image():
  # With one robust image left, every batch shape is fully known; FAB-T's and Square's loops
  # used to refuse the batch dimension their reshapes and random draws made unknown.
  network = helpers.dense_network(input_shape=(8, 8, 3), num_classes=10, seed=5)

  def model_fn(images):
    return network(images, training=False)['logits']

  x = np.random.RandomState(1).uniform(0, 1, [1, 8, 8, 3]).astype(np.float32)
  y = common.predict(model_fn, x).numpy()
  attack = aa.AutoAttack(model_fn, 1e-4, seed=0, n_iter=5, n_queries=20)
  x_adv, report = attack.run(x, y, batch_size=1)
  assert report['attacked'] == {'apgd-ce': 1, 'apgd-t': 1, 'fab-t': 1, 'square': 1}
  assert report['final_robust_accuracy'] == 1.0
  assert np.abs(x_adv - x).max() <= 1e-4 + 1e-6


# ---------------------------------------------------------------- checks


def test_checks_flag_randomised_and_probability_models():
  network = helpers.dense_network(input_shape=(8, 8, 3), num_classes=10, seed=5)

  def model_fn(images):
    return network(images, training=False)['logits']

  def noisy_fn(images):
    logits = model_fn(images)
    return logits + tf.random.normal(tf.shape(logits), stddev=0.1)

  def probs_fn(images):
    return tf.nn.softmax(model_fn(images))

  x = np.random.RandomState(0).uniform(0, 1, [8, 8, 8, 3]).astype(np.float32)
  y = np.zeros(8, np.int32)
  quiet = lambda _: None
  assert aa.checks.check_randomized(model_fn, x, y, log=quiet) == []
  assert len(aa.checks.check_randomized(noisy_fn, x, y, log=quiet)) == 1
  assert aa.checks.check_range_output(model_fn, x, log=quiet) == ([], 10)
  warnings, n_cls = aa.checks.check_range_output(probs_fn, x, log=quiet)
  assert len(warnings) == 1 and 'probability' in warnings[0] and n_cls == 10
  # Square beating the white-box attacks by more than 0.2 points.
  acc = {'clean': 0.9, 'apgd-ce': 0.5, 'apgd-t': 0.48, 'fab-t': 0.48}
  assert len(aa.checks.check_square_sr({**acc, 'square': 0.47}, log=quiet)) == 1
  assert aa.checks.check_square_sr({**acc, 'square': 0.479}, log=quiet) == []
  assert aa.checks.count_zero_gradients(np.stack([np.zeros([2, 2]), np.ones([2, 2])])) == 1
  assert len(aa.checks.check_zero_gradients(1, log=quiet)) == 1
  assert len(aa.checks.check_n_classes(3, aa.VERSIONS['standard'], 9, 9, log=quiet)) == 1
