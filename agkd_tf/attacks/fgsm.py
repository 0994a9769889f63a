"""The fast gradient sign method (Goodfellow, Shlens & Szegedy, ICLR 2015).

FGSM: one step of size eps from the clean image, no random start:
x' = P_eps(x + eps * sign grad L(x)). The step already lies in the eps ball; P_eps only adds the
[0, 1] clip (and absorbs rounding), so the result is cleverhans's `fast_gradient_method` with
norm=inf, clip_min=0, clip_max=1.
"""

import tensorflow as tf

from agkd_tf.attacks.pgd import check_loss
from agkd_tf.attacks.pgd import loss_gradient
from agkd_tf.attacks.pgd import per_example
from agkd_tf.attacks.pgd import project


def fgsm(model_fn, x, y, eps, loss='ce', targeted=False, dtype=tf.float32):
  """L-inf FGSM.

  Args:
    model_fn: images -> logits, in inference mode.
    x: [B, H, W, C] clean images in [0, 1].
    y: [B] true labels (untargeted) or target labels (targeted).
    eps: scalar or [B] per-example budget in pixel units; also the step.
    loss: 'ce' or 'cw'.
    targeted: step down the loss toward `y` instead of up away from `y`.
    dtype: the dtype the network is fed; the perturbation stays float32.

  Returns:
    [B, H, W, C] float32 adversarial images, with no gradient flowing back through them.
  """
  check_loss(loss)
  x = tf.convert_to_tensor(x, tf.float32)
  grad = loss_gradient(model_fn, x, y, loss, targeted, dtype)
  step = per_example(eps, x.shape.rank) * tf.sign(grad)
  return tf.stop_gradient(project(x + step, x, eps))
