"""A class-indexed bank of training images, sampled inside the graph.

AGKD-BML's backward adversarial example starts from "a random clean training image of class
y_mc" for every example of the batch; SML needs a second positive of the true class. The official
code loops over the batch in Python. Here the training set is sorted by class once, and a draw is
`offset[c] + floor(u * count[c])` for a whole batch of classes c: one gather, no Python loop, and
it runs under tf.function and tf.distribute like any other op.
"""

import numpy as np
import tensorflow as tf

from agkd_tf.data import pipeline


class ClassBank:
  """Training images grouped by class.

  On the CPU the images are one host uint8 tensor captured by reference in traced functions (not
  a graph constant, which would be copied into every graph). With GPUs they are a non-trainable
  variable created in the current strategy scope, so MirroredStrategy keeps one copy on each GPU
  and an XLA-compiled step reads it by handle; a captured host tensor would be copied to the device
  on every step. It is stored as float16 (0..255 is exact in float16, and GPU gathers support
  it). The bank is not a Keras layer, so it never enters checkpoints.
  """

  def __init__(self, images, labels, num_classes):
    labels = np.asarray(labels, np.int64)
    counts = np.bincount(labels, minlength=num_classes)
    if (counts == 0).any():
      missing = np.flatnonzero(counts == 0).tolist()
      raise ValueError(f'ClassBank: classes {missing} have no training images')
    order = np.argsort(labels, kind='stable')
    self.num_classes = num_classes
    sorted_images = np.asarray(images)[order]
    if tf.config.list_logical_devices('GPU'):
      self.images = tf.Variable(sorted_images.astype(np.float16), trainable=False,
                                name='class_bank_images')
      self.scale = 1.0 / 255.0 if sorted_images.dtype == np.uint8 else 1.0
    else:
      with tf.device('/cpu:0'):
        self.images = tf.constant(sorted_images)
      self.scale = None  # pipeline.to_float decides from the dtype.
    with tf.device('/cpu:0'):
      self.labels = tf.constant(labels[order].astype(np.int32))
    self.offsets = tf.constant(np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int32))
    self.counts = tf.constant(counts.astype(np.int32))

  def sample_indices(self, classes, uniform):
    """Bank indices of one random image per requested class.

    Args:
      classes: [B] int32 class of each requested image.
      uniform: [B] float32 draws in [0, 1).

    Returns:
      [B] int32 indices into the bank.
    """
    classes = tf.cast(classes, tf.int32)
    count = tf.gather(self.counts, classes)
    pick = tf.minimum(tf.cast(uniform * tf.cast(count, tf.float32), tf.int32), count - 1)
    return tf.gather(self.offsets, classes) + pick

  def sample(self, classes, rng):
    """One random training image of each requested class.

    Args:
      classes: [B] int class labels.
      rng: a tf.random.Generator (seeded by the run, so draws are reproducible).

    Returns:
      (images float32 [B, H, W, C] in [0, 1], labels [B]); labels equal `classes`.
    """
    u = rng.uniform(tf.shape(classes)[:1], dtype=tf.float32)
    idx = self.sample_indices(classes, u)
    return self.gather_images(idx), tf.gather(self.labels, idx)

  def gather_images(self, idx):
    """Bank images at `idx` as float32 in [0, 1]."""
    images = tf.gather(self.images, idx)
    if self.scale is None:
      return pipeline.to_float(images)
    return tf.cast(images, tf.float32) * self.scale
