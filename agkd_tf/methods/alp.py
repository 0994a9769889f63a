"""ALP: Kannan, Kurakin, Goodfellow, "Adversarial Logit Pairing", arXiv:1803.06373 (2018).

The official code is ImageNet only; this is the CIFAR configuration of the recipe
(`docs/algorithms.md`, "Baselines"):

- Attack: untargeted PGD-K (K = 10, step 2/255) from a uniform random start, ascending CE, in BN
  eval: exactly Madry AT's attack, so the class reuses `MadryAT.adversarial`.
- Loss: one BN-train pass over [x; x'] (2B images, so BN normalises clean and adversarial images
  together, as one mixed minibatch in the paper), mean CE over all 2B, plus
  0.5 * mean over B x K of (z(x) - z(x'))^2. Neither branch of the pairing is detached: the paper
  pulls both logits toward each other.
- `--label_smoothing` applies to the CE if given (0 by default, the recipe's plain CE).
"""

import tensorflow as tf

from agkd_tf.core import losses
from agkd_tf.methods import at

# The weight of the logit-pairing term in the recipe.
PAIRING_WEIGHT = 0.5


class ALP(at.MadryAT):
  """Adversarial logit pairing on Madry's PGD examples."""

  loss_terms = ('loss', 'ce', 'logit_pairing')
  accuracies = ('clean_accuracy', 'adv_accuracy')

  def objective(self, logits_clean, logits_adv, labels):
    """The loss terms from the [B, K] clean and adversarial logits of one BN-train pass."""
    both = tf.concat([logits_clean, logits_adv], 0)
    ce = tf.reduce_mean(losses.cross_entropy(both, tf.concat([labels, labels], 0),
                                             self.num_classes,
                                             self.config.label_smoothing))
    pairing = PAIRING_WEIGHT * tf.reduce_mean(tf.square(
        tf.cast(logits_clean, tf.float32) - tf.cast(logits_adv, tf.float32)))
    return {'loss': ce + pairing, 'ce': ce, 'logit_pairing': pairing}

  def compute_losses(self, images, labels):
    labels = tf.cast(labels, tf.int32)
    x_adv = self.adversarial(images, labels)
    batch = tf.shape(images)[0]
    logits = self.network(tf.concat([images, x_adv], 0), training=True)['logits']
    clean, adv = logits[:batch], logits[batch:]
    return self.objective(clean, adv, labels), {'clean_accuracy': clean, 'adv_accuracy': adv}
