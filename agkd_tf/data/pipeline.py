"""Deterministic tf.data input pipelines over in-memory splits.

The order and augmentation of epoch e are pure functions of (seed, e): the epoch's permutation
comes from a stateless draw, and each batch's crops and flips from stateless ops seeded by
(seed, e, batch index). A run resumed at step k of an epoch therefore rebuilds the epoch and skips
k batches, and sees exactly the batches an uninterrupted run would have seen, without storing a
50,000-image shuffle buffer in every checkpoint.

Augmentation (the official AGKD-BML / Madry CIFAR recipe): zero-pad 4 pixels, random crop back to
the original size, random horizontal flip (off for SVHN digits). Test data is untouched.
"""

import numpy as np
import tensorflow as tf


def to_float(images):
  """uint8 0..255 or float 0..1 images as float32 in [0, 1]."""
  if images.dtype == tf.uint8:
    return tf.cast(images, tf.float32) / 255.0
  return tf.cast(images, tf.float32)


def augment_batch(images, seed, pad=4, flip=True):
  """Random pad-and-crop plus horizontal flip of a batch, vectorised and stateless.

  Args:
    images: [B, H, W, C] float32.
    seed: int32 [2] stateless seed for this batch.
    pad: zero padding on each side before cropping back to H x W.
    flip: whether to flip half of the images left-right.

  Returns:
    The augmented batch, same shape.
  """
  b = tf.shape(images)[0]
  seeds = tf.random.experimental.stateless_split(seed, 3)
  oy = tf.random.stateless_uniform([b], seeds[0], 0, 2 * pad + 1, dtype=tf.int32)
  ox = tf.random.stateless_uniform([b], seeds[1], 0, 2 * pad + 1, dtype=tf.int32)
  do_flip = (tf.random.stateless_uniform([b], seeds[2]) < 0.5) if flip else None
  return crop_and_flip(images, oy, ox, do_flip, pad)


def crop_and_flip(images, oy, ox, do_flip=None, pad=4):
  """Pad-and-crop at given per-example offsets, then flip where `do_flip`, vectorised.

  Args:
    images: [B, H, W, C] float32.
    oy, ox: [B] int32 crop offsets in [0, 2 * pad] into the zero-padded images.
    do_flip: optional [B] bool.
    pad: zero padding on each side.

  Returns:
    The augmented batch, same shape.
  """
  h, w = images.shape[1], images.shape[2]
  padded = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
  # Per-example crop as two batched gathers instead of a map over examples.
  rows = oy[:, None] + tf.range(h)[None, :]
  cols = ox[:, None] + tf.range(w)[None, :]
  out = tf.gather(padded, rows, axis=1, batch_dims=1)
  out = tf.gather(out, cols, axis=2, batch_dims=1)
  if do_flip is not None:
    out = tf.where(do_flip[:, None, None, None], tf.reverse(out, axis=[2]), out)
  return out


def steps_per_epoch(num_examples, global_batch_size):
  """Full batches per epoch (the last partial batch is dropped, as PyTorch's drop_last)."""
  return num_examples // global_batch_size


def train_dataset(x, y, global_batch_size, epoch, seed, skip_batches=0, augment=True, flip=True,
                  with_index=False):
  """The batches of one training epoch.

  Args:
    x: [N, H, W, C] images (uint8 or float32 numpy array or tensor).
    y: [N] int labels.
    global_batch_size: batch size summed over replicas.
    epoch: epoch number; with `seed` it fixes order and augmentation.
    seed: run seed.
    skip_batches: batches of this epoch already trained (resume mid-epoch).
    augment: whether to crop and flip.
    flip: whether flips are allowed (False for SVHN).
    with_index: also yield each example's index in `x` (CAT keeps per-example state).

  Returns:
    A tf.data.Dataset of (images float32 [B, H, W, C] in [0, 1], labels int32 [B]) or
    (images, labels, indices).
  """
  n = len(y)
  steps = steps_per_epoch(n, global_batch_size)
  x = tf.convert_to_tensor(x)
  y = tf.convert_to_tensor(np.asarray(y, np.int32))
  order = tf.argsort(tf.random.stateless_uniform([n], [seed, epoch]))
  order = order[skip_batches * global_batch_size:steps * global_batch_size]
  batches = tf.data.Dataset.from_tensor_slices(order).batch(global_batch_size, drop_remainder=True)
  batches = batches.enumerate(start=skip_batches)

  def make(step, idx):
    images = to_float(tf.gather(x, idx))
    if augment:
      batch_seed = tf.stack([tf.cast(seed, tf.int32) * 7919 + tf.cast(epoch, tf.int32),
                             tf.cast(step, tf.int32) + 1])
      images = augment_batch(images, batch_seed, flip=flip)
    labels = tf.gather(y, idx)
    return (images, labels, tf.cast(idx, tf.int32)) if with_index else (images, labels)

  return _lean(batches.map(make).prefetch(2))


def _lean(ds):
  """A whole batch is one vectorised map call, so one private thread is enough.

  With tf.data's default shared pool and autotuning, its threads competed with the training
  step's intra-op threads and halved training throughput on our 2-core CPUs.
  """
  options = tf.data.Options()
  options.threading.private_threadpool_size = 1
  options.threading.max_intra_op_parallelism = 1
  options.autotune.enabled = False
  return ds.with_options(options)


def eval_dataset(x, y, batch_size):
  """Un-augmented batches in order, keeping the last partial batch."""
  y = np.asarray(y, np.int32)
  ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size)
  return _lean(ds.map(lambda a, b: (to_float(a), b)).prefetch(2))
