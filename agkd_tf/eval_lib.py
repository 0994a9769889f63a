"""Accuracy of a network on clean and PGD-attacked images, batched and compiled.

Used by training (`--eval_every` and the final result.json). Every forward pass is in inference
mode (BN eval), and the attack is given the true labels.
"""

import weakref

import tensorflow as tf

from agkd_tf import attacks
from agkd_tf.data import pipeline

# Compiled functions per network, dropped with the network: the functions hold only a weak
# reference to it, so evaluating many networks in one process (a sweep, the tests) does not keep
# every one of them alive.
_COMPILED = weakref.WeakKeyDictionary()


def _correct_fn(network, attack_steps, eps, step_size):
  """A compiled (images, labels, seed) -> number correct, cached per network and attack."""
  per_network = _COMPILED.setdefault(network, {})
  key = (attack_steps, float(eps), float(step_size))
  if key in per_network:
    return per_network[key]
  network_ref = weakref.ref(network)

  def logits_fn(images):
    return network_ref()(images, training=False)['logits']

  shape = [None] + list(network.input_shape[1:])

  @tf.function(input_signature=[tf.TensorSpec(shape, tf.float32), tf.TensorSpec([None], tf.int32),
                                tf.TensorSpec([2], tf.int32)])
  def correct(images, labels, batch_seed):
    if attack_steps:
      images = attacks.pgd(logits_fn, images, labels, eps, step_size, attack_steps,
                           seed=batch_seed)
    pred = tf.argmax(logits_fn(images), axis=-1, output_type=tf.int32)
    return tf.reduce_sum(tf.cast(pred == labels, tf.int32))

  per_network[key] = correct
  return correct


def accuracy(network, x, y, batch_size=256, attack_steps=0, eps=8 / 255, step_size=2 / 255,
             seed=0):
  """Top-1 accuracy, on clean images or under PGD-`attack_steps`.

  Args:
    network: a zoo network returning {'logits', ...}.
    x: images (uint8 or float32 numpy).
    y: labels.
    batch_size: evaluation batch size.
    attack_steps: 0 for clean accuracy, otherwise PGD steps (random start, CE).
    eps: L-inf budget in pixel units.
    step_size: PGD step.
    seed: seed of the random starts.

  Returns:
    Accuracy in [0, 1] as a Python float.
  """
  correct = _correct_fn(network, attack_steps, eps, step_size)
  total = 0
  for i, (images, labels) in enumerate(pipeline.eval_dataset(x, y, batch_size)):
    total += int(correct(images, labels, tf.constant([seed, i], tf.int32)))
  return total / max(len(y), 1)
