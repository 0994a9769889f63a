"""AT: Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks", ICLR 2018.

The attack is PGD-K (K = 10 in the official CIFAR runs: MadryLab/cifar10_challenge's
config.json has 10 steps, the paper 7) with step 2/255 from a uniform random start, ascending CE
given the true labels, on the network in BN eval mode (`training=False`). That is the convention
of the PyTorch re-implementations the AGKD-BML, TRADES and MART papers compare with; Madry's own
TensorFlow release attacks with BN in train mode, which normalises each attack step by the batch's
statistics and updates BN's running statistics at every step. The loss is CE on the adversarial
examples only, with BN in train mode on x' alone. The adversarial batch is a constant for the
weight update (`stop_gradient`).
"""

import tensorflow as tf

from agkd_tf import attacks
from agkd_tf.core import losses
from agkd_tf.methods import base


class MadryAT(base.Method):
  """PGD adversarial training."""

  loss_terms = ('loss',)
  accuracies = ('adv_accuracy',)

  def adversarial(self, images, labels):
    """PGD-K examples on the network in BN eval mode, from a seeded random start."""
    config = self.config
    seed = tf.cast(self.rng.make_seeds(1)[:, 0], tf.int32)
    return tf.stop_gradient(attacks.pgd(
        self.attack_logits, images, labels, config.eps, config.step_size, config.attack_steps,
        random_start=True, seed=seed))

  def compute_losses(self, images, labels):
    x_adv = self.adversarial(images, labels)
    logits = self.network(x_adv, training=True)['logits']
    ce = losses.cross_entropy(logits, labels)
    return {'loss': tf.reduce_mean(ce)}, {'adv_accuracy': logits}
