"""The momentum iterative method, MI-FGSM (Dong et al., CVPR 2018).

From "Boosting Adversarial Attacks with Momentum". MIM(n), written as cleverhans 4's
`momentum_iterative_method` computes it, from the clean image:

    g_t = grad L(x'_t) / max(1e-12, mean |grad L(x'_t)|)     (per example, over H, W, C)
    m_{t+1} = decay * m_t + g_t,  m_0 = 0
    x'_{t+1} = P_eps(x'_t + step * sign m_{t+1})

The gradient is normalised by its mean absolute value (the paper writes the L1 norm; the two differ
by the constant H*W*C, which the sign removes). Decay is 1.0, as in the paper and cleverhans.

The step defaults to 2/255, as for the other iterative attacks of AGKD-BML's evaluation (MIM-40 at
eps = 8/255; docs/algorithms.md names no other step). cleverhans's default (eps_iter = 0.06 for
eps = 0.3) is an MNIST setting, and the paper's eps/n (0.2/255 for 40 steps) lets the whole path
travel at most eps, so it cannot turn back from a poor direction; with 2/255, as in BIM and PGD,
the 40 steps can cross the ball several times.
"""

import tensorflow as tf

from agkd_tf.attacks.pgd import DEFAULT_STEP_SIZE
from agkd_tf.attacks.pgd import check_loss
from agkd_tf.attacks.pgd import loss_gradient
from agkd_tf.attacks.pgd import per_example
from agkd_tf.attacks.pgd import project
from agkd_tf.attacks.pgd import repeat

DEFAULT_DECAY = 1.0


def mim(model_fn, x, y, eps, step_size=DEFAULT_STEP_SIZE, steps=10,
        decay=DEFAULT_DECAY, loss='ce', targeted=False, dtype=tf.float32):
  """L-inf MIM.

  Args:
    model_fn: images -> logits, in inference mode.
    x: [B, H, W, C] clean images in [0, 1].
    y: [B] true labels (untargeted) or target labels (targeted).
    eps: scalar or [B] per-example budget in pixel units.
    step_size: scalar or [B] per-example step.
    steps: number of steps (a Python int or a scalar tensor).
    decay: the momentum decay factor mu.
    loss: 'ce' or 'cw'.
    targeted: descend the loss toward `y` instead of ascending it away from `y`.
    dtype: the dtype the network is fed; the perturbation and the momentum stay float32.

  Returns:
    [B, H, W, C] float32 adversarial images, within the eps ball of x and in [0, 1], with no
    gradient flowing back through them.
  """
  check_loss(loss)
  x = tf.convert_to_tensor(x, tf.float32)
  rank = x.shape.rank
  step_size = per_example(step_size, rank)
  pixel_axes = list(range(1, rank))

  def body(x_adv, momentum):
    grad = loss_gradient(model_fn, x_adv, y, loss, targeted, dtype)
    # Normalising each example's gradient makes every step weigh equally in the momentum, however
    # the loss scale changes along the path; the floor keeps a zero gradient from dividing by 0.
    scale = tf.maximum(1e-12, tf.reduce_mean(tf.abs(grad), pixel_axes, keepdims=True))
    momentum = decay * momentum + grad / scale
    x_adv = project(x_adv + step_size * tf.sign(momentum), x, eps)
    return tf.stop_gradient(x_adv), tf.stop_gradient(momentum)

  x_adv, _ = repeat(body, (x, tf.zeros_like(x)), steps)
  return tf.stop_gradient(x_adv)
