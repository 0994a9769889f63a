"""Shared set-up of the tests of SML, Feature Scattering and CAT: the methods that draw from a
class bank or keep per-example state (test_methods_sml_fs.py, test_methods_cat.py)."""

import numpy as np
import tensorflow as tf

from agkd_tf import data
from agkd_tf import methods
from agkd_tf import optim
from agkd_tf import train_lib
from agkd_tf import train_step
from tests import helpers

EPS = 8 / 255


def splits():
  """The tiny synthetic data every test of these methods uses."""
  return data.load('synthetic:8', None, 160, 40, 0)


def build(splits, name, strategy=None, lr=0.01, **config):
  strategy = strategy or tf.distribute.OneDeviceStrategy('/cpu:0')
  fields = dict(label_smoothing=0.0, eps=EPS, step_size=2 / 255, attack_steps=2,
                metric_weight=2.0, margin=0.03, norm_weight=0.001, cat_loss='ce')
  fields.update(config)
  # Facts of the training set, not hyper-parameters: the method takes them as arguments.
  facts = dict(num_train=len(splits.y_train), flip=True, augment=True)
  facts.update({k: fields.pop(k) for k in facts if k in fields})
  with strategy.scope():
    network = helpers.dense_network(num_classes=splits.num_classes, seed=3)
    bank = data.ClassBank(splits.x_train, splits.y_train, splits.num_classes)
    method = methods.build(name, network, splits.num_classes, methods.MethodConfig(**fields),
                           class_bank=bank, seed=5, **facts)
    opt = optim.TorchSGD(lr, 0.9, False, 5e-4)
    method.compile(optimizer=opt)
    opt.build(network.trainable_variables)
  return method, strategy


def batch(splits, n=16, start=0):
  x = tf.constant(splits.x_train[start:start + n], tf.float32) / 255.0
  y = tf.constant(splits.y_train[start:start + n], tf.int32)
  return x, y, tf.range(start, start + n, dtype=tf.int32)


def stepper(method, strategy, batch):
  """A function running one compiled train step on `batch`; it returns the first replica's logs."""
  step = train_step.make_step_fn(method, strategy, False)
  batch = batch if method.needs_indices else batch[:2]
  ds = tf.data.Dataset.from_tensors(batch).repeat()
  if strategy.num_replicas_in_sync > 1:
    ds = strategy.experimental_distribute_dataset(ds.unbatch().batch(int(batch[1].shape[0])))
  it = iter(ds)

  def run():
    for m in method.metrics:
      m.reset_state()
    logs = step(it)
    return {k: float(strategy.experimental_local_results(v)[0]) for k, v in logs.items()}

  return run


def assert_in_ball(adv, clean, eps):
  adv, clean = np.asarray(adv), np.asarray(clean)
  eps = np.reshape(eps, [-1, 1, 1, 1]) if np.ndim(eps) else eps
  assert (np.abs(adv - clean) <= eps + 1e-6).all()
  assert adv.min() >= 0.0 and adv.max() <= 1.0


def one_step_lowers_the_loss(splits, name, config):
  """One compiled step equals compute_losses at the same randomness and lowers the loss."""
  method, strategy = build(splits, name, **config)
  x, y, idx = batch(splits, 16)
  extra = {'indices': idx} if method.needs_indices else {}
  state = method.budgets.numpy() if name == 'cat' else None

  def reset():
    method.rng.reset_from_seed(11)
    if state is not None:  # CAT's budgets are part of the step's randomness-free state.
      method.budgets.assign(state)

  # In replica context, as in the train step: a strategy's generator draws differently there.
  losses_fn = tf.function(lambda: strategy.run(method.compute_losses, args=(x, y), kwargs=extra))

  def loss():
    reset()
    return float(losses_fn()[0]['loss'])

  before = loss()
  reset()
  step = stepper(method, strategy, (x, y, idx))
  logs = step()
  assert all(np.isfinite(v) for v in logs.values())
  assert set(logs) >= set(method.loss_terms) | set(method.accuracies)
  np.testing.assert_allclose(logs['loss'], before, rtol=1e-4)
  assert loss() < before
  # More steps run and stay finite.
  assert all(np.isfinite(v) for v in {**step(), **step()}.values())
