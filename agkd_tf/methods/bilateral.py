"""Bilateral adversarial training: Wang and Zhang, "Bilateral Adversarial Training: Towards Fast
Training of More Robust Models Against Adversarial Attacks", ICCV 2019; official code
wjyouch/bilateral-adversarial-training, the R-MC-LA variant.

As the recipe (`docs/algorithms.md`, "Baselines"):

- One BN-eval pass on the clean x gives the logits z0 (no gradient): the target
  t = argmax_{j != y} z0 ("MC", most confusing) and the adversarial label ("LA",
  `losses.bilateral_label`, gamma 0.01, multi 9).
- Attack ("R"): x' = P_eps(x0 - eps * sign grad CE(z(x0), t)) from the random start
  x0 = x + U(-eps, eps): targeted `attacks.pgd` with step eps and K = `--attack_steps` (1 in the
  official runs). The step is always eps, as the official one-step attack; `--step_size` is not
  read. One choice of ours: the start is clipped into [0, 1] before the gradient is taken (PGD's
  usual start), which the recipe leaves open; the final P_eps clips into [0, 1] either way.
- Loss: mean CE_q(z(x')), with BN in train mode on x' only. The label already smooths the target,
  so `--label_smoothing` is not read.
"""

import tensorflow as tf

from agkd_tf import attacks
from agkd_tf.core import losses
from agkd_tf.methods import base

GAMMA = 0.01
MULTI = 9.0


class Bilateral(base.Method):
  """Bilateral training (R-MC-LA): a targeted one-step attack and an adversarial label."""

  loss_terms = ('loss',)
  accuracies = ('clean_accuracy', 'adv_accuracy')

  def adversarial(self, images, labels):
    """(clean BN-eval logits, x'), both constants for the weight update."""
    config = self.config
    model_fn = self.attack_logits
    logits_clean = tf.stop_gradient(model_fn(images))
    target = attacks.most_confusing_labels(logits_clean, labels)
    seed = tf.cast(self.rng.make_seeds(1)[:, 0], tf.int32)
    x_adv = attacks.pgd(model_fn, images, target, config.eps, config.eps, config.attack_steps,
                        targeted=True, seed=seed)
    return logits_clean, tf.stop_gradient(x_adv)

  def compute_losses(self, images, labels):
    labels = tf.cast(labels, tf.int32)
    logits_clean, x_adv = self.adversarial(images, labels)
    target = losses.bilateral_label(logits_clean, labels, GAMMA, MULTI)
    logits = self.network(x_adv, training=True)['logits']
    loss = tf.reduce_mean(losses.soft_cross_entropy(logits, target))
    # There is no BN-train clean pass: the clean accuracy is that of the BN-eval pass above.
    return {'loss': loss}, {'clean_accuracy': logits_clean, 'adv_accuracy': logits}
