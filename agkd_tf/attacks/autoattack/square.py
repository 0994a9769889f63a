"""Square Attack, L-inf (Andriushchenko et al., ECCV 2020), as run inside AutoAttack.

M. Andriushchenko, F. Croce, N. Flammarion and M. Hein, "Square Attack: a query-efficient
black-box adversarial attack via random search", ECCV 2020; used by AutoAttack (Croce & Hein,
ICML 2020). This follows the L-inf branch of the official `autoattack/square.py`
(fra31/auto-attack) with the margin loss:

- Start: vertical stripes, clip(x + eps * s, 0, 1) with one random sign s per column and channel.
- Each query proposes a square of side max(round(sqrt(p H W)), 1), inside which every channel
  gets +-2 eps (one sign per channel), then projects onto the eps ball and [0, 1]. A proposal is
  accepted if it lowers the margin z_y - max_{j != y} z_j, or misclassifies. Points stop once
  misclassified; the loop stops when all are, or after n_queries proposals (n_queries + 1
  forward passes with the initial one, as the official code counts them).
- The fraction p follows the official `p_selection`: p_init up to query 10, then halved after
  queries 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000 (the index is the 0-based query
  counter, halving when it exceeds the threshold). The official function can first rescale the
  counter to int(it / n_queries * 10000) (`resc_schedule`), which with 5000 queries would halve p
  twice as early; AutoAttack constructs its Square attack with `resc_schedule=False`, so the
  unscaled schedule above is what standard AutoAttack runs, and is our default
  (`rescale_schedule=True` gives the rescaled one).
- As in the official code, the square's top-left corner is drawn with the official
  `random_int(0, H - s)`, i.e. in [0, H - s - 1] (0 when s = H): a square never starts at the
  last possible offset, so with small squares the last row and column keep their initial signs.

Deviations: the official code draws one square position and one sign vector per query for the
whole batch; here each example draws its own (the same distribution per example, so the
per-point success probability is unchanged, but results no longer depend on which other points
share the batch). Every example is evaluated at each query (the official code evaluates only the
ones not yet fooled; the accepted updates are the same). On non-square images the side is capped
at min(H, W) (the official code would index out of range). Randomness comes from TensorFlow's
stateless generators.
"""

import tensorflow as tf

from agkd_tf.attacks.autoattack import common

P_INIT = 0.8
N_QUERIES = 5000
# The official `p_selection` halves p each time the query counter exceeds one of these.
P_THRESHOLDS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def p_selection(it, p_init=P_INIT, n_queries=N_QUERIES, rescale_schedule=False):
  """The fraction of pixels of the square proposed at (0-based) query `it`.

  Args:
    it: query counter (Python int or int tensor).
    p_init: initial fraction.
    n_queries: total number of queries (only used with rescale_schedule).
    rescale_schedule: the official `resc_schedule` (off in AutoAttack): map `it` to
      int(it / n_queries * 10000) first.

  Returns:
    A float64 scalar tensor.
  """
  it = tf.cast(it, tf.float64)
  if rescale_schedule:
    it = tf.floor(it / float(n_queries) * 10000.0)
  halvings = tf.reduce_sum(tf.cast(it > tf.constant(P_THRESHOLDS, tf.float64), tf.float64))
  return tf.constant(p_init, tf.float64) * tf.pow(tf.constant(0.5, tf.float64), halvings)


def square_side(p, height, width):
  """max(round(sqrt(p H W)), 1) (rounding half to even, as Python's round), capped at min(H, W)."""
  side = tf.cast(tf.round(tf.sqrt(tf.cast(p, tf.float64) * float(height * width))), tf.int32)
  return tf.clip_by_value(side, 1, min(height, width))


@tf.function(reduce_retracing=True)
def _square_loop(model_fn, x, y, eps, seed, n_queries, p_init, rescale_schedule):
  """One Square run (the official `attack_single_run`), the query loop in one graph."""
  eps = tf.cast(eps, tf.float32)
  batch = tf.shape(x)[0]
  height, width, channels = int(x.shape[1]), int(x.shape[2]), int(x.shape[3])
  stripes = tf.sign(tf.random.stateless_uniform([batch, 1, width, channels],
                                                tf.random.fold_in(seed, -1), -1.0, 1.0))
  x_best = tf.clip_by_value(x + eps * stripes, 0.0, 1.0)
  margin_min = common.margin(common.logits_of(model_fn, x_best), y)
  rows = tf.range(height)[None, :]
  cols = tf.range(width)[None, :]
  margin_shape = margin_min.shape

  def body(i, x_best, margin_min):
    active = margin_min > 0.0
    side = square_side(p_selection(i, p_init, n_queries, rescale_schedule), height, width)
    step_seed = tf.random.fold_in(seed, i)
    u = tf.random.stateless_uniform([batch, 2], step_seed, 0.0, 1.0)
    # The official random_int(0, n - s): floor(U * (n - s)), so never the offset n - s itself.
    top = tf.cast(tf.floor(u[:, 0] * tf.cast(height - side, tf.float32)), tf.int32)[:, None]
    left = tf.cast(tf.floor(u[:, 1] * tf.cast(width - side, tf.float32)), tf.int32)[:, None]
    in_rows = tf.logical_and(rows >= top, rows < top + side)
    in_cols = tf.logical_and(cols >= left, cols < left + side)
    mask = tf.cast(tf.logical_and(in_rows[:, :, None], in_cols[:, None, :]), tf.float32)
    signs = tf.sign(tf.random.stateless_uniform([batch, 1, 1, channels],
                                                tf.random.fold_in(step_seed, 1), -1.0, 1.0))
    x_new = common.project_linf(x_best + mask[..., None] * 2.0 * eps * signs, x, eps)
    margin = common.margin(common.logits_of(model_fn, x_new), y)
    accept = tf.logical_and(active, tf.logical_or(margin < margin_min, margin <= 0.0))
    x_best = common.select_rows(accept, x_new, x_best)
    margin_min = tf.where(accept, margin, margin_min)
    # The batch-sized random draws lose a static batch size, which tf.while_loop refuses when
    # the batch is fully known (a single robust image left).
    return (i + 1, tf.ensure_shape(x_best, x.shape),
            tf.ensure_shape(margin_min, margin_shape))

  def cond(i, _, margin_min):
    return tf.logical_and(i < n_queries, tf.reduce_any(margin_min > 0.0))

  _, x_best, _ = tf.while_loop(cond, body, (tf.constant(0), x_best, margin_min))
  return x_best


def square_single_run(model_fn, x, y, eps, n_queries=N_QUERIES, p_init=P_INIT, seed=(0, 0),
                      rescale_schedule=False):
  """One Square run on a batch; returns the best points (lowest margin) [B, H, W, C]."""
  x = common.as_images(x)
  return _square_loop(model_fn, x, common.as_labels(y), tf.constant(eps, tf.float32),
                      tf.cast(tf.convert_to_tensor(seed), tf.int32), int(n_queries),
                      float(p_init), bool(rescale_schedule))


def square_attack(model_fn, x, y, eps, n_queries=N_QUERIES, p_init=P_INIT, n_restarts=1, seed=0,
           rescale_schedule=False):
  """Untargeted L-inf Square attack with the margin loss (the official `perturb`).

  Args:
    model_fn: float32 NHWC images in [0, 1] -> logits, in inference mode (only its outputs are
      used: the attack is black-box).
    x: [B, H, W, C] clean images in [0, 1].
    y: [B] true labels.
    eps: L-inf budget.
    n_queries: proposals per restart.
    p_init: initial fraction of pixels in a square.
    n_restarts: restarts, each on the points still robust.
    seed: int seed.
    rescale_schedule: the official `resc_schedule` (False in AutoAttack).

  Returns:
    Adversarial images: misclassified points where found, x elsewhere.
  """
  x = common.as_images(x)
  y = common.as_labels(y)
  robust = common.predict(model_fn, x) == y
  adv = x
  for restart in range(n_restarts):
    idx = common.robust_indices(robust)
    if int(tf.size(idx)) == 0:
      break
    x_sub, y_sub = tf.gather(x, idx), tf.gather(y, idx)
    adv_sub = square_single_run(model_fn, x_sub, y_sub, eps, n_queries, p_init,
                                common.make_seed(seed, restart), rescale_schedule)
    fooled = common.predict(model_fn, adv_sub) != y_sub
    adv = common.scatter_where(adv, idx, fooled, adv_sub)
    robust = common.scatter_where(robust, idx, fooled, tf.zeros_like(fooled))
  return adv
