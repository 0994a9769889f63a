"""Loss helpers shared by the methods, written as the official PyTorch code computes them.

All functions return per-example losses ([B]) so that callers choose the reduction once; the
method base divides by the number of replicas exactly once.
"""

import tensorflow as tf


def smoothed_labels(labels, num_classes, smoothing):
  """The official label smoothing: 1 - s on the true class and s / (K - 1) on each other class.

  This is not Keras's `label_smoothing`, which gives (1 - s) + s / K to the true class and s / K to
  the others. AGKD-BML, Feature Scattering and the natural teacher use this form (s = 0.5).

  Args:
    labels: [B] int labels.
    num_classes: K.
    smoothing: s in [0, 1).

  Returns:
    [B, K] float32 target distributions.
  """
  one_hot = tf.one_hot(labels, num_classes, dtype=tf.float32)
  if not smoothing:
    return one_hot
  off = smoothing / (num_classes - 1)
  return one_hot * (1.0 - smoothing) + (1.0 - one_hot) * off


def soft_cross_entropy(logits, targets):
  """CE_q(z) = -sum_k q_k log softmax(z)_k, per example."""
  return -tf.reduce_sum(targets * tf.nn.log_softmax(tf.cast(logits, tf.float32)), axis=-1)


def cross_entropy(logits, labels, num_classes=None, smoothing=0.0):
  """Per-example CE, with the official label smoothing when `smoothing` > 0."""
  logits = tf.cast(logits, tf.float32)
  if not smoothing:
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
  k = num_classes or logits.shape[-1]
  return soft_cross_entropy(logits, smoothed_labels(labels, k, smoothing))
