"""Feature Scattering (FS): adversarial training with an optimal-transport attack.

Zhang & Wang, "Defense Against Adversarial Attacks Using Feature Scattering-based Adversarial
Training", NeurIPS 2019; official code Haichao-Zhang/FeatureScatter. The recipe is
`docs/algorithms.md` ("Feature Scattering"). One step on a batch (x, y):

1. z = logits of the clean x, and x0 = x + U(-eps, eps), both on the network in BN eval.
2. Loss_OT = sum_ij T_ij C_ij with C_ij = max(0, 1 - cos(z_i, z(x0)_j)) and T the log-domain
   Sinkhorn plan (`agkd_tf.core.ot`), differentiated through the Sinkhorn iterations.
3. x' = P_eps(x0 + eps * sign(d Loss_OT / d x0)): one step of size eps.
4. Loss: LSCE(z(x'), y; 0.5) with BN in train mode on x' only; x' is a constant.

With `--attack_steps=K > 1` (the supplementary's equal-time runs, "FS with 2-step attack"),
steps 2 and 3 repeat K times with step `--step_size`, each against the same clean logits, as
the official attack loop (`num_steps`, `step_size`) does.

The attack is unsupervised: it never sees y, it scatters the batch's logits away from the clean
ones jointly, which is why the transport couples the examples of a batch.

Choices:
- x0 is not clipped into [0, 1] (the official code does not clip it either); x' is projected.
- One step is of size eps whatever `--step_size` says, as in the official configuration
  (num_steps 1, step_size = epsilon); only multi-step runs read `--step_size`.
- The clean logits are a constant for the attack: only x0 is perturbed.
- Under MirroredStrategy each replica transports its own local batch (B / replicas examples),
  so the plan couples fewer examples than on one device; the official runs use one GPU.
- `transport` reports Loss_OT at x0, before the step (a diagnostic, not part of the loss).
"""

import tensorflow as tf

from agkd_tf import attacks
from agkd_tf.core import losses
from agkd_tf.core import ot
from agkd_tf.core.errors import UserError
from agkd_tf.methods import base


class FeatureScatter(base.Method):
  """Feature Scattering adversarial training."""

  loss_terms = ('loss', 'transport')
  accuracies = ('adv_accuracy',)
  default_label_smoothing = 0.5  # The official LSCE(0.5).

  def __init__(self, network, num_classes, config, teacher=None, class_bank=None, seed=0,
               **kwargs):
    super().__init__(network, num_classes, config, teacher=teacher, class_bank=class_bank,
                     seed=seed, **kwargs)
    if int(config.attack_steps) < 1:
      raise UserError(f'feature_scatter needs --attack_steps >= 1, not {config.attack_steps}')

  def adversarial(self, images):
    """(x', Loss_OT at x0): the feature-scattering perturbation of a batch, BN eval.

    One step of size eps, or `attack_steps` steps of `step_size` (a static Python loop: K is
    small, and each step holds a Sinkhorn while-loop of its own).

    Args:
      images: [B, H, W, C] clean images in [0, 1].

    Returns:
      ([B, H, W, C] float32 adversarial images in the eps ball and [0, 1], a scalar).
    """
    eps = self.config.eps
    x = tf.convert_to_tensor(images, tf.float32)
    logits = self.attack_logits
    seed = tf.cast(self.rng.make_seeds(1)[:, 0], tf.int32)
    x0 = x + eps * tf.random.stateless_uniform(tf.shape(x), seed, -1.0, 1.0)
    z_clean = tf.stop_gradient(logits(x))
    steps = int(self.config.attack_steps)
    step = eps if steps == 1 else self.config.step_size
    x_adv, transport_x0 = x0, None
    for _ in range(steps):
      with tf.GradientTape() as tape:
        tape.watch(x_adv)
        transport = ot.transport_cost(z_clean, logits(x_adv))
      if transport_x0 is None:
        transport_x0 = transport
      grad = tape.gradient(transport, x_adv)
      x_adv = attacks.project(x_adv + step * tf.sign(grad), x, eps)
    return tf.stop_gradient(x_adv), tf.stop_gradient(transport_x0)

  def compute_losses(self, images, labels):
    x_adv, transport = self.adversarial(images)
    logits = self.network(x_adv, training=True)['logits']
    lsce = losses.cross_entropy(logits, labels, self.num_classes, self.config.label_smoothing)
    return {'loss': tf.reduce_mean(lsce), 'transport': transport}, {'adv_accuracy': logits}
