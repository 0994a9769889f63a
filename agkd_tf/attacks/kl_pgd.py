"""TRADES's attack (L-inf PGD ascending KL(p(x) || p(x'))) and the Gaussian start it shares.

Zhang et al., "Theoretically Principled Trade-off between Robustness and Accuracy", ICML 2019
(yaodongyu/TRADES, `trades_loss`): start from x + 0.001 * N(0, I), not clipped, then K times
x' <- P_eps(x' + step * sign grad_x' sum_i KL(p(x_i) || p(x'_i))), P_eps clipping into the eps
ball and then into [0, 1]. MART (Wang et al., ICLR 2020) starts its CE PGD from the same point.

Choices:
- `attacks.pgd` ascends a loss of (logits, labels); the KL objective needs the clean
  distribution instead of labels, so the loop is written once here, in the same form as `pgd`:
  one `pgd.repeat` loop, `stop_gradient` on every iterate and on the result, and the same
  projection (`pgd.project`).
- The clean distribution p(x) is computed once, by the same `model_fn` (inference mode, BN eval,
  as the official `model.eval()` before the attack), and held constant during the attack.
- The result is projected once more at the end, as the official code clamps x' to [0, 1] before
  the update: with zero steps the unclipped Gaussian start would otherwise leave [0, 1].
"""

import tensorflow as tf

from agkd_tf.core import losses
from agkd_tf.attacks.pgd import per_example
from agkd_tf.attacks.pgd import project
from agkd_tf.attacks.pgd import repeat

# The standard deviation of the TRADES and MART starts.
START_STD = 0.001


def gaussian_start(x, seed, std=START_STD):
  """x + std * N(0, I), not clipped, as TRADES and MART start their attacks.

  Args:
    x: [B, H, W, C] clean images in [0, 1].
    seed: int32 [2] stateless seed.
    std: the noise's standard deviation.

  Returns:
    [B, H, W, C] float32 starting points (possibly a little outside [0, 1]).
  """
  x = tf.convert_to_tensor(x, tf.float32)
  return x + std * tf.random.stateless_normal(tf.shape(x), seed)


def kl_pgd(model_fn, x, eps, step_size, steps, start, clean_logits=None):
  """L-inf PGD ascending sum_i KL(p(x_i) || p(x'_i)) (TRADES's inner maximisation).

  Args:
    model_fn: images -> logits, in inference mode.
    x: [B, H, W, C] clean images in [0, 1].
    eps: scalar or [B] budget in pixel units.
    step_size: scalar or [B] step.
    steps: number of steps (a Python int or a scalar tensor).
    start: [B, H, W, C] starting point, e.g. `gaussian_start(x, seed)`.
    clean_logits: optional [B, K] logits of x defining p(x); by default `model_fn(x)`. A caller
      whose `model_fn` runs in bfloat16 passes float32 ones, or a start closer to x than
      bfloat16's spacing leaves the attack at a zero gradient.

  Returns:
    [B, H, W, C] float32 adversarial images, within the eps ball of x and in [0, 1], with no
    gradient flowing back through them.
  """
  x = tf.convert_to_tensor(x, tf.float32)
  step_size = per_example(step_size, x.shape.rank)
  if clean_logits is None:
    clean_logits = model_fn(x)
  clean_logits = tf.stop_gradient(tf.cast(clean_logits, tf.float32))

  def body(x_adv):
    with tf.GradientTape() as tape:
      tape.watch(x_adv)
      objective = tf.reduce_sum(losses.kl_from_logits(clean_logits, model_fn(x_adv)))
    grad = tape.gradient(objective, x_adv, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return (tf.stop_gradient(project(x_adv + step_size * tf.sign(grad), x, eps)),)

  x_adv, = repeat(body, (tf.convert_to_tensor(start, tf.float32),), steps)
  return tf.stop_gradient(project(x_adv, x, eps))
