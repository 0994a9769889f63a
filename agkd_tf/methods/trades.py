"""TRADES: Zhang, Yu, Jiao, Xing, El Ghaoui, Jordan, "Theoretically Principled Trade-off between
Robustness and Accuracy", ICML 2019; official code yaodongyu/TRADES (`trades_loss`).

As the recipe (`docs/algorithms.md`, "Baselines") and the official code:

- Attack (BN eval): from x + 0.001 * N(0, I), not clipped, K = 10 steps of 0.007 ascending
  sum_i KL(p(x_i) || p(x'_i)), P_eps (eps 0.031, then [0, 1]) after each step
  (`attacks/kl_pgd.py`). The Gaussian start uses a stateless seed from the method's generator.
  The clean distribution the KL is taken from is computed in float32 even when the attack runs
  in bfloat16 (`--attack_dtype`, `--mixed_precision`), or the 0.001 start could round back onto x
  and leave the attack at a zero gradient.
- Loss: mean CE(z(x), y) + beta * (1/B) sum_i KL(p(x_i) || p(x'_i)) ("batchmean"), beta = 6
  (`--trades_beta`), KL from log_softmax on both sides. The clean target is not detached.
- BN: the official `trades_loss` calls the model in train mode three times, on x (for the CE),
  then on x' and x again (inside the KL), each batch separately (BN statistics per branch, not
  over [x; x']). We do the same three passes in the same order: the third pass's logits equal the
  first's (same batch, same weights), so the loss and its gradient use the first, and the third
  is there for what it does to BN's running statistics, which then weight clean data about 2/3
  as officially, not 1/2. It costs one forward pass of x per step.
- `--label_smoothing` applies to the CE if given (0 by default, the official plain CE).

MART shares this step (Gaussian start, attack, BN-train passes on x and x') and subclasses it,
changing the attack's objective, the loss and the passes: its official `mart_loss` calls the
model in train mode once on x and once on x' (`clean_bn_passes = 1`).
"""

import tensorflow as tf

from agkd_tf.core import losses
from agkd_tf.attacks.kl_pgd import gaussian_start
from agkd_tf.attacks.kl_pgd import kl_pgd
from agkd_tf.methods import base
from agkd_tf.methods import hparams


class TRADES(base.Method):
  """TRADES training: clean CE plus beta times the KL to the adversarial prediction."""

  hparams_class = hparams.TradesHParams

  loss_terms = ('loss', 'ce', 'kl')
  accuracies = ('clean_accuracy', 'adv_accuracy')
  # BN-train passes on x per step, as the official loss makes them (x, x', then x again).
  clean_bn_passes = 2

  def attack_start(self, images):
    """The official x + 0.001 * N(0, I) start, seeded from the method's generator."""
    seed = tf.cast(self.rng.make_seeds(1)[:, 0], tf.int32)
    return gaussian_start(images, seed)

  def adversarial(self, images, labels):
    del labels  # The KL attack needs only the clean prediction.
    config = self.config
    # The clean distribution, the KL's fixed target, is computed in float32 whatever the attack's
    # dtype: in bfloat16 the 0.001 start rounds back onto x in the network's first cast, both
    # passes then give the same distribution, the KL's gradient is exactly zero and the attack
    # never leaves its start. In float32 (the default) this is the same pass as before.
    clean_logits = self.attack_logits(images, dtype='float32')
    return kl_pgd(self.attack_logits, images, config.eps, config.step_size,
                  config.attack_steps, self.attack_start(images), clean_logits=clean_logits)

  def objective(self, logits_clean, logits_adv, labels):
    """The loss terms from the [B, K] BN-train logits of x and x'."""
    ce = tf.reduce_mean(losses.cross_entropy(logits_clean, labels, self.num_classes,
                                             self.config.label_smoothing))
    kl = self.config.trades_beta * tf.reduce_mean(
        losses.kl_from_logits(logits_clean, logits_adv))
    return {'loss': ce + kl, 'ce': ce, 'kl': kl}

  def compute_losses(self, images, labels):
    labels = tf.cast(labels, tf.int32)
    x_adv = tf.stop_gradient(self.adversarial(images, labels))
    logits_clean = self.network(images, training=True)['logits']
    logits_adv = self.network(x_adv, training=True)['logits']
    for _ in range(self.clean_bn_passes - 1):
      # The official KL's own pass on x: equal logits, one more update of BN's running statistics.
      self.network(images, training=True)
    terms = self.objective(logits_clean, logits_adv, labels)
    return terms, {'clean_accuracy': logits_clean, 'adv_accuracy': logits_adv}
