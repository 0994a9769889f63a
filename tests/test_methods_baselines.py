"""The paired-branch baselines, ALP, TRADES, MART and Bilateral: their losses against NumPy, their
attacks (balls, objectives, bfloat16 starts), their BN-train passes, and one training step of each
on tiny synthetic data. SML/TLA and Feature Scattering are in test_methods_sml_fs.py, CAT in
test_methods_cat.py, AGKD-BML in test_agkd_bml.py."""

import numpy as np
import pytest
import tensorflow as tf

from agkd_tf import data
from agkd_tf.core import losses
from agkd_tf import methods
from agkd_tf import train_lib
from agkd_tf import train_step
from agkd_tf.attacks import kl_pgd
from tests import helpers

K = 10
NAMES = ('alp', 'trades', 'mart', 'bilateral')


def _softmax(z):
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _log_softmax(z):
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _ce(z, y):
  return -_log_softmax(z.astype(np.float64))[np.arange(len(y)), y]


def _logits(seed, n=6, scale=3.0):
  rng = np.random.RandomState(seed)
  return (rng.randn(n, K) * scale).astype(np.float32), rng.randint(0, K, n)


def _bare(name, **config):
  """A method around an unused network, for its loss on hand-made logits."""
  fields = dict(label_smoothing=0.0, eps=8 / 255, step_size=2 / 255, attack_steps=1,
                trades_beta=6.0, mart_beta=6.0)
  fields.update(config)
  return methods.build(name, helpers.dense_network(num_classes=K), K,
                       methods.MethodConfig(**fields))


def test_the_four_methods_are_registered_without_label_smoothing():
  assert set(NAMES) <= set(methods.names())
  for name in NAMES:
    assert methods.get(name).default_label_smoothing == 0.0


def test_trades_kl_is_batchmean_of_the_exact_kl():
  zc, y = _logits(0)
  za, _ = _logits(1)
  # Saturated rows: p(x) has classes whose probability underflows to 0 in float32, where a
  # clipped KL (Keras's) or log(softmax) would go wrong; 0 log 0 must count as 0.
  zc[0] = 0.0
  zc[0, 3] = 200.0
  za[1, :] = -100.0
  pc, lpc, lpa = _softmax(zc.astype(np.float64)), _log_softmax(zc.astype(np.float64)), \
      _log_softmax(za.astype(np.float64))
  kl_i = (pc * (lpc - lpa)).sum(1)
  got = losses.kl_from_logits(zc, za).numpy()
  np.testing.assert_allclose(got, kl_i, rtol=1e-4, atol=1e-5)
  assert np.isfinite(got).all() and (got >= -1e-6).all()
  # The method's total: mean CE(z(x), y) + beta * (1/B) sum_i KL, beta = 6 and 2.
  for beta in (6.0, 2.0):
    terms = _bare('trades', trades_beta=beta).objective(tf.constant(zc), tf.constant(za), y)
    np.testing.assert_allclose(float(terms['kl']), beta * kl_i.mean(), rtol=1e-4)
    np.testing.assert_allclose(float(terms['loss']), _ce(zc, y).mean() + beta * kl_i.mean(),
                               rtol=1e-4)


def test_trades_gradient_reaches_the_clean_target():
  zc, y = _logits(2)
  za, _ = _logits(3)
  zc, za = tf.constant(zc), tf.constant(za)
  method = _bare('trades')
  with tf.GradientTape() as tape:
    tape.watch(zc)
    kl = method.objective(zc, za, y)['kl']
  # Not detached: the KL term alone moves the clean logits.
  grad = tape.gradient(kl, zc, unconnected_gradients=tf.UnconnectedGradients.ZERO)
  assert np.abs(grad.numpy()).max() > 1e-3


def test_mart_total_loss_weights_the_kl_by_the_clean_misclassification():
  zc, y = _logits(4)
  za, _ = _logits(5)
  za[0, y[0]] = 50.0  # The adversarial top class is y: the BCE must take the runner-up.
  zc[1, y[1]] = 60.0  # A confidently correct clean example: its KL weight is ~0.
  pc, pa = _softmax(zc.astype(np.float64)), _softmax(za.astype(np.float64))
  order = np.argsort(-pa, axis=1)
  wrong = np.where(order[:, 0] == y, order[:, 1], order[:, 0])
  bce = -np.log(1.0001 - pa[np.arange(6), wrong] + 1e-12).mean()
  kl_i = (pc * (_log_softmax(zc.astype(np.float64)) - np.log(pa + 1e-12))).sum(1)
  weights = 1.0000001 - pc[np.arange(6), y]
  assert weights[1] < 1e-6
  for beta in (6.0, 3.0):
    terms = _bare('mart', mart_beta=beta).objective(tf.constant(zc), tf.constant(za), y)
    want = _ce(za, y).mean() + bce + beta * (kl_i * weights).mean()
    np.testing.assert_allclose(float(terms['loss']), want, rtol=1e-4)
    np.testing.assert_allclose(float(terms['mart_kl']), beta * (kl_i * weights).mean(),
                               rtol=1e-4)
    np.testing.assert_allclose(float(terms['ce']), _ce(za, y).mean(), rtol=1e-5)


def test_alp_loss_is_mean_ce_over_2b_plus_half_the_mean_squared_logit_difference():
  zc, y = _logits(6)
  za, _ = _logits(7)
  terms = _bare('alp').objective(tf.constant(zc), tf.constant(za), y)
  ce = np.concatenate([_ce(zc, y), _ce(za, y)]).mean()
  pairing = 0.5 * ((zc.astype(np.float64) - za) ** 2).mean()
  np.testing.assert_allclose(float(terms['ce']), ce, rtol=1e-5)
  np.testing.assert_allclose(float(terms['logit_pairing']), pairing, rtol=1e-5)
  np.testing.assert_allclose(float(terms['loss']), ce + pairing, rtol=1e-5)
  # Neither branch is detached: the pairing pulls both logits, equally and oppositely.
  zc, za = tf.constant(zc), tf.constant(za)
  with tf.GradientTape(persistent=True) as tape:
    tape.watch([zc, za])
    pair = _bare('alp').objective(zc, za, y)['logit_pairing']
  g_clean, g_adv = tape.gradient(pair, zc).numpy(), tape.gradient(pair, za).numpy()
  np.testing.assert_allclose(g_clean, (zc - za).numpy() / K / 6, rtol=1e-5)
  np.testing.assert_allclose(g_adv, -g_clean, rtol=1e-6)


def _bilateral_numpy(z, y, gamma=0.01, multi=9.0):
  """The recipe's closed form, one example at a time."""
  out = []
  for zi, yi in zip(z.astype(np.float64), y):
    big_l = -np.log(_softmax(zi) + 1e-8)
    off = np.arange(K) != yi
    m, big_m = big_l[off].min(), big_l[off].max()
    d = (big_l[off] - m + gamma).sum()
    delta = 1.0 / (1.0 + multi * (big_m - m + gamma) / d)
    q = np.where(off, delta * (big_l - m + gamma) / d, 1.0 - delta)
    out.append(q)
  return np.array(out)


def test_bilateral_adversarial_label_closed_form():
  z, y = _logits(8, n=32, scale=4.0)
  z[0] = 0.0  # Equal off-class probabilities.
  z[1, y[1]] = -30.0  # The true class is the least likely one.
  z[2] = 0.0
  z[2, (y[2] + 1) % K] = 80.0  # One off-class probability saturates, another underflows.
  q = losses.bilateral_label(z, y).numpy()
  np.testing.assert_allclose(q, _bilateral_numpy(z, y), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(q.sum(1), 1.0, rtol=1e-5)
  assert (q > 0).all()
  q_y = q[np.arange(32), y]
  off = np.where(np.arange(K)[None] == y[:, None], -1.0, q)
  # The true-class entry is 1 - delta with delta = the off-class mass, and always exactly
  # multi = 9 times the largest off-class entry; hence q_y in [9/18, 9/10).
  np.testing.assert_allclose(q_y, 9.0 * off.max(1), rtol=1e-4)
  assert (q_y >= 0.5 - 1e-6).all() and (q_y < 0.9).all()
  # Equal off-class probabilities give the official LSCE(0.5) label.
  np.testing.assert_allclose(q[0], np.where(np.arange(K) == y[0], 0.5, 0.5 / 9), rtol=1e-4)
  # The least likely off-class class gets the most mass.
  masked = np.where(np.arange(K)[None] == y[:, None], np.inf, z)
  np.testing.assert_array_equal(off.argmax(1)[3:], masked.argmin(1)[3:])


def test_bilateral_label_is_a_constant():
  z, y = _logits(9)
  z = tf.constant(z)
  with tf.GradientTape() as tape:
    tape.watch(z)
    s = tf.reduce_sum(losses.bilateral_label(z, y) * tf.range(K, dtype=tf.float32))
  assert tape.gradient(s, z) is None


def test_kl_pgd_from_a_seeded_gaussian_start():
  x = tf.constant(np.random.RandomState(10).rand(4, 8, 8, 3).astype(np.float32))
  seed = tf.constant([3, 4])
  start = kl_pgd.gaussian_start(x, seed)
  np.testing.assert_array_equal(start.numpy(), kl_pgd.gaussian_start(x, seed).numpy())
  noise = (start - x).numpy()
  assert 0.0005 < noise.std() < 0.002 and np.abs(noise.mean()) < 3e-4
  network = helpers.dense_network(num_classes=K, seed=3)
  model_fn = lambda v: network(v, training=False)['logits']
  # Zero steps: the start itself, brought into [0, 1] as the official clamp before the update.
  x0 = kl_pgd.kl_pgd(model_fn, x, 8 / 255, 2 / 255, 0, start).numpy()
  np.testing.assert_allclose(x0, np.clip(start.numpy(), 0.0, 1.0), atol=1e-7)


@pytest.fixture(scope='module')
def splits():
  return data.load('synthetic:8', None, 160, 40, 0)


def _method(splits, name, lr=0.01, **config):
  strategy = tf.distribute.OneDeviceStrategy('/cpu:0')
  fields = dict(label_smoothing=0.0, eps=8 / 255, step_size=2 / 255, attack_steps=3,
                trades_beta=6.0, mart_beta=6.0)
  fields.update(config)
  with strategy.scope():
    network = helpers.dense_network(num_classes=splits.num_classes, seed=7)
    method = methods.build(name, network, splits.num_classes, methods.MethodConfig(**fields),
                           seed=5)
    helpers.compile_with_sgd(method, network, lr)
  return method, strategy


def _batch(splits, n=32):
  return helpers.fixed_batch(splits, n)


def _adversarial_images(method, x, y):
  out = method.adversarial(x, y)
  return out[1] if isinstance(out, tuple) else out


@pytest.mark.parametrize('name', NAMES)
def test_attacks_stay_in_the_ball_and_climb_their_objective(splits, name):
  eps = 8 / 255
  method, _ = _method(splits, name)
  x, y = _batch(splits)
  method.rng.reset_from_seed(11)
  x_adv = _adversarial_images(method, x, y)
  assert np.abs(x_adv.numpy() - x.numpy()).max() <= eps + 1e-6
  assert x_adv.numpy().min() >= 0.0 and x_adv.numpy().max() <= 1.0
  assert np.abs(x_adv.numpy() - x.numpy()).max() > eps / 2  # It moved.
  logits = lambda v: method.network(v, training=False)['logits']
  if name == 'trades':
    objective = lambda v: float(tf.reduce_sum(losses.kl_from_logits(logits(x), logits(v))))
    # From the Gaussian start, where the KL is ~0.
    method.rng.reset_from_seed(11)
    assert objective(x_adv) > 10 * objective(method.attack_start(x)) + 1e-4
  elif name == 'bilateral':
    target = method.adversarial(x, y)[0]
    target = tf.argmax(tf.where(tf.one_hot(y, splits.num_classes) > 0, -np.inf, target), -1)
    objective = lambda v: -float(tf.reduce_mean(losses.cross_entropy(logits(v), target)))
    assert objective(x_adv) > objective(x)
  else:
    objective = lambda v: float(tf.reduce_mean(losses.cross_entropy(logits(v), y)))
    assert objective(x_adv) > objective(x)
  # The random start is seeded by the method's generator: the same state, the same attack.
  method.rng.reset_from_seed(11)
  np.testing.assert_array_equal(_adversarial_images(method, x, y).numpy(), x_adv.numpy())


def _one_step(method, strategy, batch):
  step = train_step.make_step_fn(method, strategy, False)
  for m in method.metrics:
    m.reset_state()
  logs = step(iter(tf.data.Dataset.from_tensors(batch).repeat()))
  return {k: float(strategy.experimental_local_results(v)[0]) for k, v in logs.items()}


@pytest.mark.parametrize('name', NAMES)
def test_one_step_on_a_fixed_batch_lowers_the_total_loss(splits, name):
  method, strategy = _method(splits, name)
  x, y = _batch(splits)

  def total_at_fixed_randomness():
    # The attack's random start comes from the method's generator: reset it for equal draws.
    method.rng.reset_from_seed(21)
    return float(method.compute_losses(x, y)[0]['loss'])

  before = total_at_fixed_randomness()
  method.rng.reset_from_seed(21)
  logs = _one_step(method, strategy, (x, y))
  assert all(np.isfinite(v) for v in logs.values())
  assert set(logs) == set(method.loss_terms) | set(method.accuracies)
  np.testing.assert_allclose(logs['loss'], before, rtol=1e-4)
  assert total_at_fixed_randomness() < before


@pytest.mark.parametrize('name', ['trades', 'mart'])
def test_attacks_leave_a_start_below_bfloat16_spacing(name):
  """In bfloat16, a start closer to x than the spacing still gives a moving attack.

  Pixels on bfloat16's grid in [0.5, 1) (spacing 1/256) and a start 1e-4 away: the network's
  first cast rounds x' back onto x. TRADES's KL then had exactly zero gradient and its attack
  stayed at the start; MART's CE does not vanish. Both must move a full step.
  """
  rng = np.random.RandomState(0)
  x = tf.constant((128 + rng.randint(0, 128, (6, 8, 8, 3))) / 256, tf.float32)
  y = tf.constant(rng.randint(0, K, 6), tf.int32)
  method = _bare(name, attack_dtype='bfloat16', attack_steps=1)
  start = x + 1e-4 * tf.constant(rng.randn(6, 8, 8, 3), tf.float32)
  method.attack_start = lambda images: start
  x_adv = tf.function(method.adversarial)(x, y).numpy()
  moved = np.abs(x_adv - start.numpy()) > 0.5 * 2 / 255
  assert moved.mean() > 0.9, moved.mean()
  # Every example moves, not only some: a zero KL gradient is per example.
  assert moved.reshape(6, -1).mean(axis=1).min() > 0.5


@pytest.mark.parametrize('name,expected', [('trades', ['x', 'x_adv', 'x']),
                                           ('mart', ['x', 'x_adv'])])
def test_bn_train_passes_follow_the_official_losses(splits, name, expected):
  """TRADES's official loss calls the model in train mode on x, x' and x again; MART's on x, x'.

  The passes decide what BN's running statistics average (clean data 2/3 of TRADES's updates),
  so they are counted, in order, on the inputs the network sees in train mode.
  """
  method, _ = _method(splits, name)
  x, y = _batch(splits)
  network = method.network
  seen = []

  def spy(inputs, training=False):
    if training:
      seen.append(inputs)
    return network(inputs, training=training)

  x_adv = tf.stop_gradient(_adversarial_images(method, x, y))
  # Only the training passes are counted: the attack (in inference mode) is fixed beforehand.
  object.__setattr__(method, 'adversarial', lambda images, labels: x_adv)
  object.__setattr__(method, 'network', spy)
  try:
    method.compute_losses(x, y)
  finally:
    object.__setattr__(method, 'network', network)
    object.__delattr__(method, 'adversarial')
  names = ['x' if np.array_equal(v.numpy(), x.numpy()) else
           'x_adv' if np.array_equal(v.numpy(), x_adv.numpy()) else 'other' for v in seen]
  assert names == expected
