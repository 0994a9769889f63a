"""UM: natural (undefended) training, the baseline of every table and AGKD-BML's teacher.

Cross-entropy on clean images in BN train mode, optionally with the official label smoothing
(the AGKD-BML teacher uses 0.5: 1 - s on the true class and s / (K - 1) on the others).
"""

import tensorflow as tf

from agkd_tf.core import losses
from agkd_tf.methods import base


class Natural(base.Method):
  """Natural training with (optionally smoothed) cross-entropy."""

  loss_terms = ('loss',)
  accuracies = ('accuracy',)

  def compute_losses(self, images, labels):
    logits = self.network(images, training=True)['logits']
    ce = losses.cross_entropy(logits, labels, self.num_classes,
                              self.config.label_smoothing)
    return {'loss': tf.reduce_mean(ce)}, {'accuracy': logits}
