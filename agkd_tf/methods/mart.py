"""MART: Wang, Zou, Yi, Bailey, Ma, Gu, "Improving Adversarial Robustness Requires Revisiting
Misclassified Examples", ICLR 2020; official code YisenWang/MART (`mart_loss`).

As the recipe (`docs/algorithms.md`, "Baselines") and the official code:

- Attack (BN eval): from x + 0.001 * N(0, I), K = 10 steps of 0.007 ascending CE, eps 0.031,
  P_eps after each step: `attacks.pgd` with that start. The result is projected once more, as the
  official code clamps x' to [0, 1] before the update (only a zero-step attack needs it).
- Loss: CE(z(x'), y) + BCE + beta * weighted KL, beta = 6 (`--mart_beta`); the last two are
  `losses.mart_terms`, shared with AGKD-BML. The clean branch is not detached.
- The step is TRADES's (Gaussian start, separate BN-train passes on x and x'), so the class
  subclasses `TRADES` and replaces the attack and the loss; it makes one BN-train pass on x where
  TRADES makes two, as the official `mart_loss` and `trades_loss` do.
- `--label_smoothing` applies to the CE if given (0 by default, the official plain CE). `--agkd_mart`
  is AGKD-BML's switch and is not read here.
"""

import tensorflow as tf

from agkd_tf import attacks
from agkd_tf.core import losses
from agkd_tf.methods import trades
from agkd_tf.methods import hparams


class MART(trades.TRADES):
  """MART training: adversarial CE, boosted BCE and misclassification-weighted KL."""

  hparams_class = hparams.MartHParams

  loss_terms = ('loss', 'ce', 'mart_bce', 'mart_kl')
  clean_bn_passes = 1  # The official mart_loss calls the model once on x, once on x'.

  def adversarial(self, images, labels):
    config = self.config
    x_adv = attacks.pgd(self.attack_logits, images, labels, config.eps, config.step_size,
                        config.attack_steps, start=self.attack_start(images))
    return attacks.project(x_adv, images, config.eps)

  def objective(self, logits_clean, logits_adv, labels):
    """The loss terms from the [B, K] BN-train logits of x and x'."""
    ce = tf.reduce_mean(losses.cross_entropy(logits_adv, labels, self.num_classes,
                                             self.config.label_smoothing))
    bce, kl = losses.mart_terms(logits_clean, logits_adv, labels,
                                self.config.mart_beta)
    return {'loss': ce + bce + kl, 'ce': ce, 'mart_bce': bce, 'mart_kl': kl}
