"""Helpers shared by the AutoAttack components: L-inf geometry, predictions, seeds, subsets.

The attacks of AutoAttack (Croce & Hein, ICML 2020) all work on the points that are still robust,
so each wrapper gathers that subset, runs a compiled loop on it and scatters the result back. The
gathering happens eagerly between compiled loops (a few times per attack, never per example).
"""

import numpy as np
import tensorflow as tf


def as_images(x):
  """float32 tensor of images in [0, 1] (NHWC)."""
  return tf.convert_to_tensor(x, tf.float32)


def as_labels(y):
  return tf.cast(tf.convert_to_tensor(y), tf.int32)


def logits_of(model_fn, x):
  # Attacks work in float32 whatever the policy of the network (mixed-precision logits are
  # too coarse for the DLR ratio and the FAB hyperplanes).
  return tf.cast(model_fn(x), tf.float32)


def expand(v, x):
  """Reshapes a per-example vector [B] to broadcast against images [B, H, W, C]."""
  return tf.reshape(v, [-1] + [1] * (len(x.shape) - 1))


def select_rows(cond, a, b):
  """tf.where(cond, a, b) per example: rows of `a` where cond [B] holds, of `b` elsewhere.

  The same values as tf.where(expand(cond, a), a, b). It selects on [B, D] views because
  TensorFlow's CPU select broadcasting a [B, 1, 1, 1] condition over images is several times
  slower than the [B, 1] one over rows (measured 8x on [100, 32, 32, 3]), and the attack loops
  select whole images several times per iteration.
  """
  shape = tf.shape(a)
  flat = tf.where(cond[:, None], tf.reshape(a, [shape[0], -1]), tf.reshape(b, [shape[0], -1]))
  out = tf.reshape(flat, shape)
  out.set_shape(a.shape)  # Loop variables keep their static shape.
  return out


def linf_norm(v):
  """Per-example L-inf norm of a batch of tensors."""
  return tf.reduce_max(tf.abs(tf.reshape(v, [tf.shape(v)[0], -1])), axis=1)


def project_linf(z, x, eps):
  """Clip into the L-inf ball of radius eps around x, then into the [0, 1] box."""
  return tf.clip_by_value(tf.minimum(tf.maximum(z, x - eps), x + eps), 0.0, 1.0)


def margin(logits, y):
  """z_y - max_{j != y} z_j, per example (positive iff correctly classified)."""
  one_hot = tf.one_hot(y, tf.shape(logits)[-1]) > 0.5
  correct = tf.reduce_sum(tf.where(one_hot, logits, tf.zeros_like(logits)), axis=-1)
  other = tf.reduce_max(tf.where(one_hot, tf.fill(tf.shape(logits), -np.inf), logits), axis=-1)
  return correct - other


@tf.function(reduce_retracing=True)
def _predict(model_fn, x):
  return tf.argmax(logits_of(model_fn, x), axis=-1, output_type=tf.int32)


@tf.function(reduce_retracing=True)
def _logits(model_fn, x):
  return logits_of(model_fn, x)


def predict(model_fn, x):
  """Predicted labels [B] (int32), one compiled forward pass."""
  return _predict(model_fn, as_images(x))


def logits(model_fn, x):
  """Float32 logits [B, K], one compiled forward pass."""
  return _logits(model_fn, as_images(x))


def make_seed(seed, *streams):
  """A stateless int32 [2] seed, derived deterministically from a seed and stream ids.

  Args:
    seed: an int, or a tuple of ints (a base seed followed by stream ids).
    *streams: further stream ids.

  Each attack, batch, target class and restart gets its own stream, so results do not depend on
  the order in which batches are processed.
  """
  ids = tuple(seed) if isinstance(seed, (tuple, list)) else (seed,)
  s = tf.constant([int(ids[0]) % (2**31 - 1), 0], tf.int32)
  for stream in ids[1:] + streams:
    s = tf.random.fold_in(s, tf.constant(int(stream), tf.int32))
  return tf.cast(s, tf.int32)


def robust_indices(robust):
  """Indices [M] of the True entries of a boolean vector."""
  return tf.cast(tf.reshape(tf.where(robust), [-1]), tf.int32)


def scatter_where(target, indices, mask, values):
  """target[indices[mask]] = values[mask]: writes back the successful part of a subset."""
  sel = tf.cast(tf.reshape(tf.where(mask), [-1]), tf.int32)
  rows = tf.gather(indices, sel)[:, None]
  return tf.tensor_scatter_nd_update(target, rows, tf.gather(values, sel))


def descending_order(logits_):
  """Class indices sorted by decreasing logit ([B, K]); column j is the (j+1)-th highest."""
  # A stable sort: equal logits keep index order, so targets are deterministic.
  return tf.argsort(logits_, axis=-1, direction='DESCENDING', stable=True)
