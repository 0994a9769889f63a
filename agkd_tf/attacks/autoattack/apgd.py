"""APGD and APGD-T in the L-inf ball (Croce & Hein, ICML 2020).

F. Croce and M. Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", ICML 2020. This follows the L-inf branch of the official
`autoattack/autopgd_base.py` (fra31/auto-attack):

- Start at x + eps * t / ||t||_inf, t ~ U(-1, 1)^d, clipped to [0, 1]. Step eta = 2 eps.
- The first step is a plain signed-gradient step; after it, with a = 0.75,
  z = P(x_k + eta sign g), x_{k+1} = P(x_k + a (z - x_k) + (1 - a)(x_k - x_{k-1})).
- Checkpoints: the official code counts down a window that starts at max(int(0.22 n), 1) and
  shrinks by max(int(0.03 n), 1) per checkpoint down to max(int(0.06 n), 1); for n = 100 these
  are the iterations 22, 41, 57, 70, 80, 87, 93, 99 of the paper (p_0 = 0, p_1 = 0.22,
  p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06), checkpoint ceil(p_j n)), and for n = 200
  too. For other n we keep the official integer rounding, which departs from the paper's
  formula: n = 50 checks at 11, 21, 30, 38, 45 (paper: 11, 21, 29, 35, 40, 44, 47, 50), n = 10
  at every iteration from the 2nd.
- At a checkpoint an example halves its step and restarts from its best point (with the
  gradient there) if the loss increased in at most rho = 75% of the steps since the last
  checkpoint, or if it did not halve at the previous checkpoint and its best loss has not
  improved since.
- Per example, the point of highest loss and the last misclassified point are tracked; the
  attack returns the misclassified point where there is one.

Faithful details kept on purpose: the step count of the first window compares the first loss to
0 (the official code reads a not yet written, zero, entry of its loss history there); after a
restart from the best point the momentum term uses the point before the restart; the
zero-gradient count is taken at the random start, where the official code checks it.

Deviations: randomness comes from TensorFlow's stateless generators (seeded per attack, batch,
target and restart), so the random starts differ from PyTorch's for the same seed. Ties in the
ranking of target classes are broken by class index.
"""

import collections

import numpy as np
import tensorflow as tf

from agkd_tf.attacks.autoattack import common

RHO = 0.75
MOMENTUM = 0.75
LOSSES = ('ce', 'dlr', 'dlr-targeted')

ApgdResult = collections.namedtuple(
    'ApgdResult', ['x_adv', 'robust', 'x_best', 'loss_best', 'step_size', 'n_zero_grad'])
ApgdResult.__doc__ = """State at the end of one APGD run.

x_adv: the last misclassified point of each example (its random start if it never was).
robust: [B] bool, True where no iterate was misclassified.
x_best: the point of highest loss.
loss_best: [B] the highest loss.
step_size: [B] the final step size (2 eps halved at each reduction).
n_zero_grad: number of examples whose gradient at the random start is exactly zero.
"""


def checkpoint_schedule(n_iter):
  """The official APGD checkpoints.

  Args:
    n_iter: number of iterations.

  Returns:
    A list of (iteration, window) pairs: after `iteration` (1-based) steps the step size is
    checked over the last `window` steps.
  """
  window = max(int(0.22 * n_iter), 1)
  window_min = max(int(0.06 * n_iter), 1)
  size_decr = max(int(0.03 * n_iter), 1)
  schedule = []
  it = window
  while it <= n_iter:
    schedule.append((it, window))
    window = max(window - size_decr, window_min)
    it += window
  return schedule


def checkpoints(n_iter):
  """The (1-based) iterations after which APGD may halve its step: (22, 41, ..., 99) for 100."""
  return tuple(it for it, _ in checkpoint_schedule(n_iter))


def step_size_decision(n_increase, window, loss_best, loss_best_last_check, reduced_last_check,
                       rho=RHO):
  """Which examples halve their step (and restart from their best point) at a checkpoint.

  Args:
    n_increase: [B] number of steps since the last checkpoint in which the loss increased.
    window: number of steps since the last checkpoint.
    loss_best: [B] best loss now.
    loss_best_last_check: [B] best loss at the last checkpoint.
    reduced_last_check: [B] bool, whether the step was halved at the last checkpoint.
    rho: the fraction of increasing steps at or below which the step is halved.

  Returns:
    [B] bool.
  """
  n_increase = tf.cast(n_increase, tf.float32)
  oscillates = n_increase <= tf.cast(window, tf.float32) * rho
  stalled = tf.logical_and(tf.logical_not(reduced_last_check),
                           loss_best_last_check >= loss_best)
  return tf.logical_or(oscillates, stalled)


def dlr_loss(logits, y):
  """DLR = -(z_y - max_{j != y} z_j) / (z_pi1 - z_pi3 + 1e-12), pi sorting the logits down."""
  logits = tf.cast(logits, tf.float32)
  y = tf.cast(y, tf.int32)
  top = tf.math.top_k(logits, k=3).values
  is_top = tf.argmax(logits, axis=-1, output_type=tf.int32) == y
  z_y = tf.gather(logits, y, batch_dims=1)
  # If y is the top class the runner-up is the second largest logit, otherwise the largest.
  other = tf.where(is_top, top[:, 1], top[:, 0])
  return -(z_y - other) / (top[:, 0] - top[:, 2] + 1e-12)


def dlr_loss_targeted(logits, y, y_target):
  """Targeted DLR = -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12)."""
  logits = tf.cast(logits, tf.float32)
  y = tf.cast(y, tf.int32)
  y_target = tf.cast(y_target, tf.int32)
  top = tf.math.top_k(logits, k=4).values
  z_y = tf.gather(logits, y, batch_dims=1)
  z_t = tf.gather(logits, y_target, batch_dims=1)
  return -(z_y - z_t) / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + 1e-12)


def _per_example_loss(loss, logits, y, y_target):
  if loss == 'ce':
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
  if loss == 'dlr':
    return dlr_loss(logits, y)
  if loss == 'dlr-targeted':
    return dlr_loss_targeted(logits, y, y_target)
  raise ValueError(f'Unknown APGD loss "{loss}"; valid: {", ".join(LOSSES)}')


@tf.function(reduce_retracing=True)
def _apgd_loop(model_fn, x, y, y_target, eps, seed, x_init, n_iter, loss, rho, eot_iter):
  """One APGD run on a batch, the whole iteration loop in one graph."""
  eps = tf.cast(eps, tf.float32)
  schedule = checkpoint_schedule(n_iter)
  is_check = np.zeros([n_iter], bool)
  window = np.zeros([n_iter], np.float32)
  for it, k in schedule:
    is_check[it - 1] = True
    window[it - 1] = k
  is_check = tf.constant(is_check)
  window = tf.constant(window)

  def single_pass(z):
    with tf.GradientTape() as tape:
      tape.watch(z)
      logits = common.logits_of(model_fn, z)
      loss_indiv = _per_example_loss(loss, logits, y, y_target)
      total = tf.reduce_sum(loss_indiv)
    return logits, loss_indiv, tape.gradient(total, z)

  def loss_and_grad(z):
    logits, loss_indiv, grad = single_pass(z)
    if eot_iter == 1:
      return logits, loss_indiv, grad

    # Expectation over transformation (randomised defences): average the gradient over passes,
    # keep the logits and loss of the last pass, as the official code does.
    def eot_body(j, logits, loss_indiv, grad):
      lo, li, g = single_pass(z)
      return j + 1, lo, li, grad + g

    _, logits, loss_indiv, grad = tf.while_loop(
        lambda j, *_: j < eot_iter, eot_body, (tf.constant(1), logits, loss_indiv, grad))
    return logits, loss_indiv, grad / float(eot_iter)

  if x_init is None:
    t = tf.random.stateless_uniform(tf.shape(x), seed, -1.0, 1.0)
    x_adv = tf.clip_by_value(x + eps * t / common.expand(common.linf_norm(t) + 1e-12, x),
                             0.0, 1.0)
  else:
    x_adv = tf.clip_by_value(x_init, 0.0, 1.0)
  logits, loss_indiv, grad = loss_and_grad(x_adv)
  grad_l1 = tf.reduce_sum(tf.abs(tf.reshape(grad, [tf.shape(grad)[0], -1])), axis=1)
  n_zero_grad = tf.reduce_sum(tf.cast(grad_l1 == 0.0, tf.int32))
  robust = tf.argmax(logits, axis=-1, output_type=tf.int32) == y
  batch = tf.shape(x)[0]
  state = dict(
      x_adv=x_adv,
      x_adv_old=x_adv,
      grad=grad,
      x_best=x_adv,
      grad_best=grad,
      loss_best=loss_indiv,
      x_best_adv=x_adv,
      robust=robust,
      step=2.0 * eps * tf.ones([batch], tf.float32),
      prev_loss=tf.zeros([batch], tf.float32),
      n_increase=tf.zeros([batch], tf.float32),
      loss_best_last_check=loss_indiv,
      # True: the stall condition cannot fire at the first checkpoint.
      reduced_last_check=tf.ones([batch], tf.bool),
  )

  def body(i, s):
    x_cur = s['x_adv']
    grad2 = x_cur - s['x_adv_old']
    a = tf.where(i > 0, MOMENTUM, 1.0)
    step = common.expand(s['step'], x)
    z = common.project_linf(x_cur + step * tf.sign(s['grad']), x, eps)
    x_new = common.project_linf(x_cur + (z - x_cur) * a + grad2 * (1.0 - a), x, eps)
    logits, loss_indiv, grad = loss_and_grad(x_new)

    pred_ok = tf.argmax(logits, axis=-1, output_type=tf.int32) == y
    robust = tf.logical_and(s['robust'], pred_ok)
    x_best_adv = common.select_rows(pred_ok, s['x_best_adv'], x_new)
    improved = loss_indiv > s['loss_best']
    x_best = common.select_rows(improved, x_new, s['x_best'])
    grad_best = common.select_rows(improved, grad, s['grad_best'])
    loss_best = tf.where(improved, loss_indiv, s['loss_best'])
    n_increase = s['n_increase'] + tf.cast(loss_indiv > s['prev_loss'], tf.float32)

    # Checkpoint: every example is tested, but only where this iteration is a checkpoint does
    # the decision take effect (a select is cheaper than a cond around the whole block).
    check = is_check[i]
    halve = tf.logical_and(check, step_size_decision(
        n_increase, window[i], loss_best, s['loss_best_last_check'], s['reduced_last_check'],
        rho))
    return i + 1, dict(
        x_adv=common.select_rows(halve, x_best, x_new),
        x_adv_old=x_cur,
        grad=common.select_rows(halve, grad_best, grad),
        x_best=x_best,
        grad_best=grad_best,
        loss_best=loss_best,
        x_best_adv=x_best_adv,
        robust=robust,
        step=tf.where(halve, s['step'] / 2.0, s['step']),
        prev_loss=loss_indiv,
        n_increase=tf.where(check, tf.zeros_like(n_increase), n_increase),
        loss_best_last_check=tf.where(check, loss_best, s['loss_best_last_check']),
        reduced_last_check=tf.where(check, halve, s['reduced_last_check']),
    )

  _, s = tf.while_loop(lambda i, _: i < n_iter, body, (tf.constant(0), state))
  return ApgdResult(s['x_best_adv'], s['robust'], s['x_best'], s['loss_best'], s['step'],
                    n_zero_grad)


def apgd_single_run(model_fn, x, y, eps, n_iter=100, loss='ce', y_target=None, seed=(0, 0),
                    rho=RHO, eot_iter=1, x_init=None):
  """One APGD run (the official `attack_single_run`) on every example of a batch.

  Args:
    model_fn: float32 NHWC images in [0, 1] -> logits, in inference mode.
    x: [B, H, W, C] clean images.
    y: [B] true labels.
    eps: L-inf budget.
    n_iter: number of iterations.
    loss: 'ce', 'dlr' or 'dlr-targeted'.
    y_target: [B] target classes for 'dlr-targeted'.
    seed: int32 [2] stateless seed of the random start.
    rho: the oscillation threshold of the step-size rule.
    eot_iter: passes averaged per gradient (1 for deterministic models).
    x_init: optional starting points (the official `x_init`) instead of the random start.

  Returns:
    An `ApgdResult`.
  """
  if loss not in LOSSES:
    raise ValueError(f'Unknown APGD loss "{loss}"; valid: {", ".join(LOSSES)}')
  x = common.as_images(x)
  y = common.as_labels(y)
  if loss == 'dlr-targeted':
    if y_target is None:
      raise ValueError('the targeted DLR loss needs y_target')
    y_target = common.as_labels(y_target)
  else:
    y_target = y
  if x_init is not None:
    x_init = common.as_images(x_init)
  return _apgd_loop(model_fn, x, y, y_target, tf.constant(eps, tf.float32),
                    tf.cast(tf.convert_to_tensor(seed), tf.int32), x_init, int(n_iter), loss,
                    float(rho), int(eot_iter))


def _check_classes(num_classes, loss):
  needed = {'ce': 2, 'dlr': 3, 'dlr-targeted': 4}[loss]
  if num_classes < needed:
    raise ValueError(f'the {loss} loss needs at least {needed} classes, the model has '
                     f'{num_classes}')


def apgd_attack(model_fn, x, y, eps, n_iter=100, loss='ce', n_restarts=1, seed=0, rho=RHO,
                eot_iter=1, return_info=False):
  """Untargeted APGD with CE or DLR loss (the official `APGDAttack.perturb`).

  Only the points the model classifies correctly are attacked; each restart runs on the points
  still robust, from a new random start.

  Args:
    model_fn: float32 NHWC images in [0, 1] -> logits, in inference mode.
    x: [B, H, W, C] clean images in [0, 1].
    y: [B] true labels.
    eps: L-inf budget.
    n_iter: iterations per restart.
    loss: 'ce' or 'dlr'.
    n_restarts: number of restarts.
    seed: int seed (or a tuple of ints: a seed and stream ids); with the same seed the attack
      is deterministic.
    rho: the oscillation threshold of the step-size rule.
    eot_iter: gradient passes averaged per step (for randomised defences).
    return_info: also return a dict with 'n_zero_grad' (at the first random start).

  Returns:
    Adversarial images: the misclassified point found for fooled examples, x elsewhere (and the
    info dict if asked).
  """
  if loss not in ('ce', 'dlr'):
    raise ValueError(f'apgd_attack takes loss "ce" or "dlr", not "{loss}" (see apgd_targeted)')
  x = common.as_images(x)
  y = common.as_labels(y)
  clean_logits = common.logits(model_fn, x)
  _check_classes(int(clean_logits.shape[-1]), loss)
  robust = tf.argmax(clean_logits, axis=-1, output_type=tf.int32) == y
  adv = x
  info = {'n_zero_grad': 0}
  for restart in range(n_restarts):
    idx = common.robust_indices(robust)
    if int(tf.size(idx)) == 0:
      break
    res = apgd_single_run(model_fn, tf.gather(x, idx), tf.gather(y, idx), eps, n_iter, loss,
                          seed=common.make_seed(seed, restart), rho=rho, eot_iter=eot_iter)
    if restart == 0:
      info['n_zero_grad'] = int(res.n_zero_grad)
    fooled = tf.logical_not(res.robust)
    adv = common.scatter_where(adv, idx, fooled, res.x_adv)
    robust = common.scatter_where(robust, idx, fooled, tf.zeros_like(fooled))
  return (adv, info) if return_info else adv


def apgd_targeted(model_fn, x, y, eps, n_iter=100, n_target_classes=9, n_restarts=1, seed=0,
                  rho=RHO, eot_iter=1, return_info=False):
  """APGD-T: APGD on the targeted DLR loss, one run per target class (official
  `APGDAttack_targeted.perturb`).

  The targets are the 2nd to (n_target_classes + 1)-th highest clean logits of each point; each
  target runs only on the points still robust.

  Args:
    model_fn: float32 NHWC images in [0, 1] -> logits, in inference mode.
    x: [B, H, W, C] clean images in [0, 1].
    y: [B] true labels.
    eps: L-inf budget.
    n_iter: iterations per target.
    n_target_classes: number of targets (capped at the number of classes - 1).
    n_restarts: restarts per target.
    seed: int seed.
    rho: the oscillation threshold of the step-size rule.
    eot_iter: gradient passes averaged per step.
    return_info: also return a dict with 'n_zero_grad' (at the random starts of the first
      target, the points then attacked).

  Returns:
    Adversarial images (and the info dict if asked).
  """
  x = common.as_images(x)
  y = common.as_labels(y)
  clean_logits = common.logits(model_fn, x)
  num_classes = int(clean_logits.shape[-1])
  _check_classes(num_classes, 'dlr-targeted')
  order = common.descending_order(clean_logits)
  robust = tf.argmax(clean_logits, axis=-1, output_type=tf.int32) == y
  adv = x
  info = {'n_zero_grad': 0}
  for target_rank in range(2, min(n_target_classes, num_classes - 1) + 2):
    y_target = order[:, target_rank - 1]
    for restart in range(n_restarts):
      idx = common.robust_indices(robust)
      if int(tf.size(idx)) == 0:
        break
      res = apgd_single_run(model_fn, tf.gather(x, idx), tf.gather(y, idx), eps, n_iter,
                            'dlr-targeted', y_target=tf.gather(y_target, idx),
                            seed=common.make_seed(seed, target_rank, restart), rho=rho,
                            eot_iter=eot_iter)
      if target_rank == 2 and restart == 0:
        info['n_zero_grad'] = int(res.n_zero_grad)
      fooled = tf.logical_not(res.robust)
      adv = common.scatter_where(adv, idx, fooled, res.x_adv)
      robust = common.scatter_where(robust, idx, fooled, tf.zeros_like(fooled))
  return (adv, info) if return_info else adv
