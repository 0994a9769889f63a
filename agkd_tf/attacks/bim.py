"""The basic iterative method (Kurakin, Goodfellow & Bengio, ICLR 2017 workshop).

BIM(n): n steps of x' <- P_eps(x' + step * sign grad L(x')) from the clean image, with no random
start; that is, PGD without its random start. The step is 2/255 by default, as in the evaluation
code of AGKD-BML and the defences it is compared with (the paper's alternative is eps/n). Matches
cleverhans's `basic_iterative_method` with norm=inf, clip_min=0, clip_max=1.
"""

import tensorflow as tf

from agkd_tf.attacks.pgd import DEFAULT_STEP_SIZE
from agkd_tf.attacks.pgd import pgd


def bim(model_fn, x, y, eps, step_size=DEFAULT_STEP_SIZE, steps=10, loss='ce',
        targeted=False, dtype=tf.float32):
  """L-inf BIM.

  Args:
    model_fn: images -> logits, in inference mode.
    x: [B, H, W, C] clean images in [0, 1].
    y: [B] true labels (untargeted) or target labels (targeted).
    eps: scalar or [B] per-example budget in pixel units.
    step_size: scalar or [B] per-example step.
    steps: number of steps (a Python int or a scalar tensor).
    loss: 'ce' or 'cw'.
    targeted: descend the loss toward `y` instead of ascending it away from `y`.
    dtype: the dtype the network is fed; the perturbation stays float32.

  Returns:
    [B, H, W, C] float32 adversarial images, within the eps ball of x and in [0, 1].
  """
  return pgd(model_fn, x, y, eps, step_size, steps, random_start=False, loss=loss,
             targeted=targeted, dtype=dtype)
