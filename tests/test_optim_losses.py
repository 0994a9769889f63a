"""Tests of PyTorch-style SGD, the lr schedules and the official label smoothing."""

import keras
import numpy as np
import tensorflow as tf

from agkd_tf.core import losses
from agkd_tf import optim


def _torch_sgd_reference(param, grads, lrs, momentum, wd, nesterov, decay):
  """torch.optim.SGD's update, written out in NumPy."""
  p = param.copy()
  buf = None
  for g, lr in zip(grads, lrs):
    g = g + wd * p if decay else g.copy()
    buf = g.copy() if buf is None else momentum * buf + g
    step = g + momentum * buf if nesterov else buf
    p = p - lr * step
  return p


def test_torch_sgd_matches_pytorch_update_across_an_lr_change():
  rng = np.random.RandomState(0)
  init = rng.randn(3, 4).astype(np.float32)
  bias_init = rng.randn(4).astype(np.float32)
  grads = [rng.randn(3, 4).astype(np.float32) for _ in range(5)]
  bgrads = [rng.randn(4).astype(np.float32) for _ in range(5)]
  lrs = [0.1, 0.1, 0.1, 0.01, 0.01]
  for nesterov in (False, True):
    for which in ('all', 'kernels'):
      kernel = keras.Variable(init, name='kernel')
      bias = keras.Variable(bias_init, name='bias')
      schedule = optim.EpochSchedule(0.1, steps_per_epoch=1, kind='piecewise', decay_epochs=[3])
      opt = optim.TorchSGD(schedule, 0.9, nesterov, 5e-4, which)
      for g, bg in zip(grads, bgrads):
        opt.apply([tf.constant(g), tf.constant(bg)], [kernel, bias])
      np.testing.assert_allclose(
          kernel.numpy(), _torch_sgd_reference(init, grads, lrs, 0.9, 5e-4, nesterov, True),
          rtol=1e-5, atol=1e-6)
      np.testing.assert_allclose(
          bias.numpy(),
          _torch_sgd_reference(bias_init, bgrads, lrs, 0.9, 5e-4, nesterov, which == 'all'),
          rtol=1e-5, atol=1e-6)


def test_piecewise_schedule_changes_at_epoch_boundaries():
  s = optim.EpochSchedule(0.1, steps_per_epoch=10, kind='piecewise', decay_epochs=[100, 150])
  values = [float(s(step)) for step in (0, 999, 1000, 1499, 1500, 1999)]
  np.testing.assert_allclose(values, [0.1, 0.1, 0.01, 0.01, 0.001, 0.001], rtol=1e-6)


def test_cosine_with_warmup():
  s = optim.EpochSchedule(0.2, steps_per_epoch=10, kind='cosine', warmup_epochs=1,
                          total_epochs=11)
  assert abs(float(s(0)) - 0.02) < 1e-6
  assert abs(float(s(9)) - 0.2) < 1e-6
  assert abs(float(s(60)) - 0.1) < 1e-6  # Half-way through the cosine part.
  assert float(s(110)) < 1e-6


def test_official_label_smoothing():
  q = losses.smoothed_labels(tf.constant([2, 0]), 4, 0.5).numpy()
  np.testing.assert_allclose(q[0], [0.5 / 3, 0.5 / 3, 0.5, 0.5 / 3], rtol=1e-6)
  np.testing.assert_allclose(q.sum(1), [1, 1], rtol=1e-6)
  logits = np.random.RandomState(0).randn(2, 4).astype(np.float32)
  log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
  expected = -(q * log_p).sum(1)
  np.testing.assert_allclose(losses.cross_entropy(logits, tf.constant([2, 0]), 4, 0.5), expected,
                             rtol=1e-5)
  # Without smoothing it is the plain sparse cross-entropy.
  np.testing.assert_allclose(losses.cross_entropy(logits, tf.constant([2, 0])),
                             -log_p[[0, 1], [2, 0]], rtol=1e-5)
