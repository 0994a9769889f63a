"""FAB and FAB-T, the L-inf Fast Adaptive Boundary attack (Croce & Hein, ICML 2020).

F. Croce and M. Hein, "Minimally distorted adversarial examples with a fast adaptive boundary
attack", ICML 2020; used in AutoAttack (Croce & Hein, ICML 2020, "Reliable evaluation of
adversarial robustness with an ensemble of diverse parameter-free attacks"). This follows the
L-inf branch of the official `autoattack/fab_base.py`, `fab_pt.py` and `fab_projections.py`
(fra31/auto-attack).

Each iteration linearises the decision boundary between the true class y and a class t (FAB-T:
the given target; FAB: the class whose linearised boundary is closest in L-inf), and projects both
the current point x1 and the original x0 onto that hyperplane, inside the [0, 1] box
(`projection_linf`: the minimal L-inf step). The next point is
  x1 <- clip((x1 + eta d1)(1 - alpha) + (x0 + eta d2) alpha, 0, 1),
  alpha = min(||d1|| / (||d1|| + ||d2||), alpha_max)  (L-inf norms, floored at 1e-8),
with eta = 1.05 and alpha_max = 0.1. Whenever x1 is misclassified it is kept if closer to x0 than
the best so far and pulled back to x0 + beta (x1 - x0), beta = 0.9. FAB minimises the norm: a
point counts for AutoAttack only if its L-inf distance is at most eps. The first restart starts at
x0; later restarts (untargeted FAB of version 'plus') start at a random point at half eps.

`projection_linf` is the official algorithm: sort the coordinates by the room they have towards
the box edge that moves <w, x> toward b, find by bisection the L-inf radius at which the sum of
the capped moves meets the hyperplane, and move every coordinate by min(radius, room). Where the
hyperplane does not meet the box, it returns the box corner that comes closest.

Deviations: divisions by a zero L1 norm of w (w = 0 on the coordinates that matter) yield a zero
step instead of an infinity; ties in the ranking of targets are broken by class index; random
restarts use TensorFlow's stateless generators; the projection may rank tied rooms in another
order than the official stable sort (on a CPU it sorts in NumPy), which leaves its step the same up
to float rounding. The jacobian of untargeted FAB comes from
`GradientTape.batch_jacobian` (the official code runs one backward pass per class: same values).
"""

import math

import numpy as np
import tensorflow as tf

from agkd_tf.attacks.autoattack import common

ALPHA_MAX = 0.1
ETA = 1.05
BETA = 0.9
_FAR = 1e10  # "No adversarial point found yet", as in the official code.


def projection_linf(points, w, b):
  """Minimal L-inf step from each point onto the hyperplane <w, z> = b within the box [0, 1]^d.

  Args:
    points: [N, d] points t in [0, 1].
    w: [N, d] hyperplane normals.
    b: [N] offsets.

  Returns:
    [N, d] steps delta: t + delta lies in [0, 1]^d and on the hyperplane with the smallest
    ||delta||_inf; where no point of the box lies on the hyperplane, delta moves t to the box
    corner that minimises |<w, z> - b|.
  """
  t = tf.convert_to_tensor(points, tf.float32)
  w = tf.convert_to_tensor(w, tf.float32)
  b = tf.convert_to_tensor(b, tf.float32)
  n = int(t.shape[1]) if t.shape[1] is not None else None
  if n is None:
    raise ValueError('projection_linf needs a static number of coordinates')

  # Orient the hyperplane so that <w, t> >= b: the step must then decrease <w, z>.
  sign = tf.where(tf.reduce_sum(w * t, axis=1) - b >= 0, 1.0, -1.0)
  w = w * sign[:, None]
  b = b * sign
  nonzero = tf.cast(w != 0, tf.float32)
  a = tf.cast(w < 0, tf.float32)  # The edge each coordinate moves to (1 where w < 0).
  d = (a - t) * nonzero  # The full move to that edge.
  room = a - t * (2.0 * a - 1.0)  # |a - t|: how far each coordinate can move.
  b = b - tf.reduce_sum(w * t, axis=1)  # The change of <w, z> still needed (<= 0).
  b0 = tf.reduce_sum(w * d, axis=1)  # The largest change the box allows.

  # Coordinates by decreasing room: at radius r the first k (room >= r) are capped at r. Each
  # full move changes <w, z> by w d = -|w| room (d points toward the edge that lowers <w, z>), the
  # same floats as the official -w * d, so only |w| and the rooms need sorting.
  room_s, abs_ws = sorted_by_room(room, tf.abs(w))
  s = tf.cumsum(abs_ws, axis=1)
  sb = tf.cumsum(abs_ws * room_s, axis=1) + b0[:, None]
  # <w, delta(r)> at r = room of the k-th coordinate, for every k (non-decreasing in k).
  at_room = sb - s * room_s

  inside_min = b - at_room[:, -1] > 0  # The radius is below the smallest room.
  bisect = tf.logical_and(b - b0 > 0, tf.logical_not(inside_min))

  # The official bisection, for all rows at once (rows outside `bisect` are discarded below).
  lb = tf.zeros_like(b)
  ub = tf.fill(tf.shape(b), float(n - 1))
  for _ in range(math.ceil(math.log2(n)) if n > 1 else 0):
    mid = tf.floor((lb + ub) / 2.0)
    k = tf.cast(mid, tf.int32)[:, None]
    above = b - tf.gather(at_room, k, batch_dims=1)[:, 0] > 0
    lb = tf.where(above, mid, lb)
    ub = tf.where(above, ub, mid)
  k = tf.cast(lb, tf.int32)[:, None]

  def radius(target, s_k):
    # The official code divides by -s; s = 0 only where w vanishes on every capped coordinate,
    # where it would yield an infinite or NaN radius: use 0 (no step) instead.
    safe = tf.where(s_k > 0, s_k, 1.0)
    return tf.where(s_k > 0, tf.maximum(target / safe, 0.0), 0.0)

  r_min = radius(sb[:, -1] - b, s[:, -1])[:, None]
  d_min = (2.0 * a - 1.0) * r_min
  r_k = radius(tf.gather(sb, k, batch_dims=1)[:, 0] - b, tf.gather(s, k, batch_dims=1)[:, 0])
  r_k = r_k[:, None]
  d_k = tf.minimum(r_k, d) * a + tf.maximum(-r_k, d) * (1.0 - a)
  d = tf.where(inside_min[:, None], d_min, tf.where(bisect[:, None], d_k, d))
  return d * nonzero


def _sorted_by_room_np(room, abs_w):
  # NumPy's quicksort argsort is vectorised (AVX-512 where the CPU has it).
  # Flat indices: np.take on them is 3x faster than np.take_along_axis.
  order = np.argsort(-room, axis=1) + np.arange(0, room.size, room.shape[1])[:, None]
  return room.ravel().take(order), abs_w.ravel().take(order)


def sorted_by_room(room, abs_w):
  """Rows of room and abs_w [N, d], both permuted to put room in decreasing order.

  Ties may come in any order: the projection's sums are the same over a run of equal rooms (the
  radius at which they are capped is then their common room), so its result does not depend on
  how ties are ranked. Without a GPU the sort and permutation run in NumPy: tf.argsort (TopK with
  k = d) took 8.5 ms on [116, 3072], 15% of a whole FAB iteration of a small CNN, against
  1.7 ms for NumPy's argsort, inside the same graph (AMD EPYC, 2 cores). With a GPU they stay on
  the device.
  """
  if tf.config.list_logical_devices('GPU'):
    order = tf.reverse(tf.argsort(room, axis=1, stable=True), axis=[1])
    return tf.gather(room, order, batch_dims=1), tf.gather(abs_w, order, batch_dims=1)
  # Two halves of the rows, two independent ops: NumPy releases the GIL while it sorts, so the
  # executor sorts them on two cores at once.
  half = (tf.shape(room)[0] + 1) // 2
  parts = [tf.numpy_function(_sorted_by_room_np, [r, w], [tf.float32, tf.float32], stateful=False)
           for r, w in ((room[:half], abs_w[:half]), (room[half:], abs_w[half:]))]
  room_s = tf.concat([parts[0][0], parts[1][0]], 0)
  abs_ws = tf.concat([parts[0][1], parts[1][1]], 0)
  room_s.set_shape(room.shape)
  abs_ws.set_shape(abs_w.shape)
  return room_s, abs_ws


def _num_features(x):
  dims = x.shape[1:]
  if not dims.is_fully_defined():
    raise ValueError(f'FAB needs images of a static shape, got {x.shape}')
  return int(np.prod(dims))


def _diff_logits_grads(model_fn, x1, y, y_target, targeted):
  """Differences of logits to the true class and their gradients, flattened: [B, J], [B, J, d]."""
  batch = tf.shape(x1)[0]
  # A static number of features: projection_linf bisects over it.
  dim = _num_features(x1)
  if targeted:
    with tf.GradientTape() as tape:
      tape.watch(x1)
      logits = common.logits_of(model_fn, x1)
      diff = (tf.gather(logits, y_target, batch_dims=1) - tf.gather(logits, y, batch_dims=1))
      total = tf.reduce_sum(diff)
    grad = tape.gradient(total, x1)
    return diff[:, None], tf.reshape(grad, [batch, 1, dim])
  with tf.GradientTape() as tape:
    tape.watch(x1)
    logits = common.logits_of(model_fn, x1)
  jac = tape.batch_jacobian(logits, x1)
  num_classes = tf.shape(logits)[1]
  jac = tf.reshape(jac, [batch, num_classes, dim])
  df = logits - tf.gather(logits, y, batch_dims=1)[:, None]
  dg = jac - tf.gather(jac, y, batch_dims=1)[:, None]
  # The true class is not a boundary: give it an infinite distance.
  df = tf.where(tf.one_hot(y, num_classes) > 0.5, _FAR, df)
  return df, dg


@tf.function(reduce_retracing=True)
def _fab_loop(model_fn, x, y, y_target, eps, seed, n_iter, alpha_max, eta, beta, targeted,
              random_start):
  """One FAB run (the official `attack_single_run`), the loop in one graph."""
  eps = tf.cast(eps, tf.float32)
  batch = tf.shape(x)[0]
  dim = _num_features(x)
  x0 = tf.reshape(x, [batch, dim])
  clean_ok = tf.argmax(common.logits_of(model_fn, x), axis=-1, output_type=tf.int32) == y
  res2 = tf.fill([batch], _FAR)
  if random_start:
    t = tf.random.stateless_uniform(tf.shape(x), seed, -1.0, 1.0)
    scale = tf.minimum(res2, eps)
    x1 = x + common.expand(scale, x) * t / common.expand(common.linf_norm(t), x) * 0.5
    x1 = tf.clip_by_value(x1, 0.0, 1.0)
  else:
    x1 = x

  def body(i, x1, adv, res2):
    df, dg = _diff_logits_grads(model_fn, x1, y, y_target, targeted)
    dist = tf.abs(df) / (1e-12 + tf.reduce_sum(tf.abs(dg), axis=-1))
    ind = tf.argmin(dist, axis=1, output_type=tf.int32)
    w = tf.gather(dg, ind, batch_dims=1)
    x1_flat = tf.reshape(x1, [batch, dim])
    b = -tf.gather(df, ind, batch_dims=1) + tf.reduce_sum(w * x1_flat, axis=1)
    d3 = projection_linf(tf.concat([x1_flat, x0], 0), tf.concat([w, w], 0),
                         tf.concat([b, b], 0))
    d1 = tf.reshape(d3[:batch], tf.shape(x))
    d2 = tf.reshape(d3[batch:], tf.shape(x))
    a0 = tf.maximum(tf.reduce_max(tf.abs(d3), axis=1), 1e-8)
    a1, a2 = a0[:batch], a0[batch:]
    alpha = common.expand(tf.minimum(tf.maximum(a1 / (a1 + a2), 0.0), alpha_max), x)
    x1 = tf.clip_by_value((x1 + eta * d1) * (1.0 - alpha) + (x + d2 * eta) * alpha, 0.0, 1.0)

    is_adv = tf.argmax(common.logits_of(model_fn, x1), axis=-1, output_type=tf.int32) != y
    dist_x1 = common.linf_norm(x1 - x)
    closer = tf.logical_and(is_adv, dist_x1 < res2)
    adv = common.select_rows(closer, x1, adv)
    res2 = tf.where(closer, dist_x1, res2)
    # Step back toward the original so that the next iterations look for a closer point.
    x1 = common.select_rows(is_adv, x + (x1 - x) * beta, x1)
    # The reshapes above lose a static batch size, which tf.while_loop refuses when the batch is
    # fully known (a single robust image left for FAB-T).
    return (i + 1, tf.ensure_shape(x1, x.shape), tf.ensure_shape(adv, x.shape),
            tf.ensure_shape(res2, res2_shape))

  res2_shape = res2.shape
  _, _, adv, res2 = tf.while_loop(lambda i, *_: i < n_iter, body,
                                  (tf.constant(0), x1, x, res2))
  success = tf.logical_and(clean_ok, res2 < _FAR)
  return common.select_rows(success, adv, x), tf.where(success, res2, _FAR)


def fab_single_run(model_fn, x, y, eps, targeted=True, y_target=None, n_iter=100,
                   alpha_max=ALPHA_MAX, eta=ETA, beta=BETA, random_start=False, seed=(0, 0)):
  """One FAB run on a batch.

  Args:
    model_fn: float32 NHWC images in [0, 1] -> logits, in inference mode.
    x: [B, H, W, C] clean images in [0, 1].
    y: [B] true labels.
    eps: L-inf budget (only sets the radius of a random start).
    targeted: FAB-T (boundary to y_target) or FAB (closest boundary).
    y_target: [B] targets for FAB-T.
    n_iter: iterations.
    alpha_max: cap of the weight of the step from the original point.
    eta: overshoot of each projection.
    beta: backward step after a success.
    random_start: start at a random point at half eps instead of x.
    seed: int32 [2] stateless seed of the random start.

  Returns:
    (adv, dist): the closest misclassified point found ([B, H, W, C], x where none) and its
    L-inf distance ([B], 1e10 where none; also for initially misclassified points).
  """
  x = common.as_images(x)
  y = common.as_labels(y)
  if targeted:
    if y_target is None:
      raise ValueError('FAB-T needs y_target')
    y_target = common.as_labels(y_target)
  else:
    y_target = y
  return _fab_loop(model_fn, x, y, y_target, tf.constant(eps, tf.float32),
                   tf.cast(tf.convert_to_tensor(seed), tf.int32), int(n_iter), float(alpha_max),
                   float(eta), float(beta), bool(targeted), bool(random_start))


def fab_attack(model_fn, x, y, eps, targeted=True, n_target_classes=9, n_restarts=1, n_iter=100,
        alpha_max=ALPHA_MAX, eta=ETA, beta=BETA, seed=0):
  """FAB-T (targeted, AutoAttack's standard) or FAB (untargeted), the official `perturb`.

  FAB-T runs once per target, the 2nd to (n_target_classes + 1)-th highest clean logits, each on
  the points still robust. A point is fooled when FAB finds a misclassified point within eps.
  The first restart starts at x, later ones at random points.

  Args:
    model_fn: float32 NHWC images in [0, 1] -> logits, in inference mode.
    x: [B, H, W, C] clean images in [0, 1].
    y: [B] true labels.
    eps: L-inf budget.
    targeted: FAB-T or FAB.
    n_target_classes: number of targets of FAB-T (capped at the number of classes - 1).
    n_restarts: restarts (per target for FAB-T).
    n_iter: iterations per run.
    alpha_max: cap of the weight of the step from the original point.
    eta: overshoot of each projection.
    beta: backward step after a success.
    seed: int seed.

  Returns:
    Adversarial images: misclassified points within eps where found, x elsewhere.
  """
  x = common.as_images(x)
  y = common.as_labels(y)
  clean_logits = common.logits(model_fn, x)
  num_classes = int(clean_logits.shape[-1])
  robust = tf.argmax(clean_logits, axis=-1, output_type=tf.int32) == y
  adv = x
  if targeted:
    order = common.descending_order(clean_logits)
    targets = [order[:, r - 1] for r in range(2, min(n_target_classes, num_classes - 1) + 2)]
  else:
    targets = [None]
  for target_idx, y_target in enumerate(targets):
    for restart in range(n_restarts):
      idx = common.robust_indices(robust)
      if int(tf.size(idx)) == 0:
        break
      x_sub, y_sub = tf.gather(x, idx), tf.gather(y, idx)
      adv_sub, _ = fab_single_run(
          model_fn, x_sub, y_sub, eps, targeted=targeted,
          y_target=None if y_target is None else tf.gather(y_target, idx), n_iter=n_iter,
          alpha_max=alpha_max, eta=eta, beta=beta, random_start=restart > 0,
          seed=common.make_seed(seed, target_idx, restart))
      # As the official perturb: fooled = misclassified and within eps.
      fooled = tf.logical_and(common.predict(model_fn, adv_sub) != y_sub,
                              common.linf_norm(adv_sub - x_sub) <= eps)
      adv = common.scatter_where(adv, idx, fooled, adv_sub)
      robust = common.scatter_where(robust, idx, fooled, tf.zeros_like(fooled))
  return adv
