"""Tests of the white-box attacks: cleverhans 4 cross-checks, projection, losses and registry.

The cross-checks start our attacks and cleverhans's from the same point (the clean image) and
demand the same adversarial images to 1e-6; both compute the same float32 ops in the same order,
so anything else is a bug in the step, the projection, the loss or the momentum.
"""

from cleverhans.tf2.attacks.basic_iterative_method import basic_iterative_method
from cleverhans.tf2.attacks.fast_gradient_method import fast_gradient_method
from cleverhans.tf2.attacks.momentum_iterative_method import momentum_iterative_method
from cleverhans.tf2.attacks.projected_gradient_descent import projected_gradient_descent
import keras
import numpy as np
import pytest
import tensorflow as tf

from agkd_tf import attacks
from agkd_tf import models
from agkd_tf.core.errors import UserError
from tests import helpers

EPS = 8 / 255
STEP = 2 / 255
STEPS = 10
# Float32 rounding of x + delta: one ulp of a pixel near 1 is 6e-8.
TOL = 1e-6


def _logits_fn(network):
  return lambda images: network(images, training=False)['logits']


@pytest.fixture(scope='module')
def cnn():
  """An untrained cnn-cpu (BatchNorm in inference mode) on 16x16 RGB, 10 classes."""
  keras.utils.set_random_seed(0)
  return models.build('cnn-cpu', (16, 16, 3), 10)


@pytest.fixture(scope='module')
def batch():
  """8 images with pixels at and near 0 and 1, so that the [0, 1] clip matters."""
  rng = np.random.RandomState(1)
  x = rng.rand(8, 16, 16, 3).astype(np.float32)
  x[0, :4] = 0.0
  x[1, :4] = 1.0
  x[2, :4] = 1.0 - 0.5 * EPS
  x[3, :4] = 0.5 * EPS
  y = rng.randint(0, 10, 8).astype(np.int32)
  return x, y


def _targets(network, x, y):
  return attacks.most_confusing_labels(_logits_fn(network)(x), y).numpy()


def _cw_loss_for_cleverhans(labels, logits):
  return attacks.cw_margin_loss(logits, labels)


# name -> (ours(model_fn, x, y, targets), cleverhans(model_fn, x, y, targets)).
_CROSS_CHECKS = {
    'fgsm': (
        lambda m, x, y, t: attacks.fgsm(m, x, y, EPS),
        lambda m, x, y, t: fast_gradient_method(m, x, EPS, np.inf, clip_min=0.0, clip_max=1.0,
                                                y=y, sanity_checks=False)),
    'fgsm-targeted': (
        lambda m, x, y, t: attacks.fgsm(m, x, t, EPS, targeted=True),
        lambda m, x, y, t: fast_gradient_method(m, x, EPS, np.inf, clip_min=0.0, clip_max=1.0,
                                                y=t, targeted=True, sanity_checks=False)),
    'bim': (
        lambda m, x, y, t: attacks.bim(m, x, y, EPS, STEP, STEPS),
        lambda m, x, y, t: basic_iterative_method(m, x, EPS, STEP, STEPS, np.inf, clip_min=0.0,
                                                  clip_max=1.0, y=y, sanity_checks=False)),
    'pgd-ce': (
        lambda m, x, y, t: attacks.pgd(m, x, y, EPS, STEP, STEPS, random_start=False),
        lambda m, x, y, t: projected_gradient_descent(
            m, x, EPS, STEP, STEPS, np.inf, clip_min=0.0, clip_max=1.0, y=y, rand_init=False,
            sanity_checks=False)),
    'pgd-cw': (
        lambda m, x, y, t: attacks.pgd(m, x, y, EPS, STEP, STEPS, random_start=False, loss='cw'),
        lambda m, x, y, t: projected_gradient_descent(
            m, x, EPS, STEP, STEPS, np.inf, loss_fn=_cw_loss_for_cleverhans, clip_min=0.0,
            clip_max=1.0, y=y, rand_init=False, sanity_checks=False)),
    'pgd-targeted': (
        lambda m, x, y, t: attacks.pgd(m, x, t, EPS, STEP, STEPS, random_start=False,
                                       targeted=True),
        lambda m, x, y, t: projected_gradient_descent(
            m, x, EPS, STEP, STEPS, np.inf, clip_min=0.0, clip_max=1.0, y=t, targeted=True,
            rand_init=False, sanity_checks=False)),
    'mim': (
        lambda m, x, y, t: attacks.mim(m, x, y, EPS, STEP, STEPS),
        lambda m, x, y, t: momentum_iterative_method(
            m, x, EPS, STEP, STEPS, np.inf, clip_min=0.0, clip_max=1.0, y=y, decay_factor=1.0,
            sanity_checks=False)),
}


@pytest.mark.parametrize('name', sorted(_CROSS_CHECKS))
def test_same_adversarial_examples_as_cleverhans(name, cnn, batch):
  x, y = batch
  model_fn = _logits_fn(cnn)
  t = _targets(cnn, x, y)
  ours_fn, theirs_fn = _CROSS_CHECKS[name]
  # Ours compiled, as it runs in training and evaluation; cleverhans eager, as its users run it.
  ours = tf.function(lambda x, y, t: ours_fn(model_fn, x, y, t))(
      tf.constant(x), tf.constant(y), tf.constant(t)).numpy()
  theirs = theirs_fn(model_fn, tf.constant(x), tf.constant(y), tf.constant(t)).numpy()
  diff = float(np.max(np.abs(ours - theirs)))
  print(f'{name}: max |ours - cleverhans| = {diff:.3g}')
  # The attack must have moved the images, or agreeing would prove nothing.
  assert np.max(np.abs(ours - x)) > 0.9 * EPS
  assert diff <= TOL


def test_cross_check_tolerance_catches_a_wrong_step(cnn, batch):
  """The 1e-6 cross-check separates a step of 2/255 from one of 2.1/255 (it can fail)."""
  x, y = batch
  model_fn = _logits_fn(cnn)
  ours = attacks.bim(model_fn, x, y, EPS, 2.1 / 255, 3).numpy()
  theirs = basic_iterative_method(model_fn, tf.constant(x), EPS, STEP, 3, np.inf, clip_min=0.0,
                                  clip_max=1.0, y=tf.constant(y), sanity_checks=False).numpy()
  assert np.max(np.abs(ours - theirs)) > 100 * TOL


@pytest.mark.parametrize('kind', ['fgsm', 'bim', 'pgd-ce', 'pgd-cw', 'mim'])
@pytest.mark.parametrize('per_example', [False, True])
def test_attacks_stay_in_the_eps_ball_and_in_the_unit_box(kind, per_example, cnn, batch):
  x, y = batch
  model_fn = _logits_fn(cnn)
  if per_example:
    eps = np.array([0, 1, 2, 4, 8, 8, 16, 3], np.float32) / 255
  else:
    eps = np.full([8], EPS, np.float32)
  eps_arg = tf.constant(eps) if per_example else EPS
  run = {
      'fgsm': lambda: attacks.fgsm(model_fn, x, y, eps_arg),
      'bim': lambda: attacks.bim(model_fn, x, y, eps_arg, STEP, STEPS),
      'pgd-ce': lambda: attacks.pgd(model_fn, x, y, eps_arg, STEP, STEPS, seed=[0, 1]),
      'pgd-cw': lambda: attacks.pgd(model_fn, x, y, eps_arg, STEP, STEPS, loss='cw',
                                    seed=[0, 2]),
      'mim': lambda: attacks.mim(model_fn, x, y, eps_arg, STEP, STEPS),
  }[kind]
  x_adv = tf.function(run)().numpy()
  assert x_adv.dtype == np.float32
  assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
  dev = np.max(np.abs(x_adv - x), axis=(1, 2, 3))
  np.testing.assert_array_less(dev, eps + TOL)
  # The whole budget is used (some pixel reaches the border), and a zero budget changes nothing.
  np.testing.assert_allclose(dev, eps, atol=TOL)
  np.testing.assert_array_equal(x_adv[eps == 0], x[eps == 0])


def test_random_start_is_uniform_in_the_ball_and_seeded(cnn, batch):
  x, y = batch
  eps = tf.constant([EPS] * 4 + [2 * EPS] * 4)
  start = attacks.uniform_start(x, eps, seed=[3, 4]).numpy()
  again = attacks.uniform_start(x, eps, seed=[3, 4]).numpy()
  other = attacks.uniform_start(x, eps, seed=[3, 5]).numpy()
  np.testing.assert_array_equal(start, again)
  assert np.max(np.abs(start - other)) > 0.5 * EPS
  for i, e in enumerate(eps.numpy()):
    noise = start[i] - x[i]
    assert np.max(np.abs(noise)) <= e + TOL
    interior = (x[i] > e) & (x[i] < 1 - e)
    # U(-e, e) has mean 0 and mean absolute value e / 2 (768 draws: 4 sigma is about 0.06 e).
    assert abs(np.mean(noise[interior])) < 0.08 * e
    assert abs(np.mean(np.abs(noise[interior])) - e / 2) < 0.08 * e
  # PGD with zero steps returns its start.
  pgd0 = attacks.pgd(_logits_fn(cnn), x, y, eps, STEP, 0, seed=[3, 4]).numpy()
  np.testing.assert_array_equal(pgd0, start)


def test_targeted_pgd_lowers_the_target_loss(cnn, batch):
  x, y = batch
  model_fn = _logits_fn(cnn)
  t = _targets(cnn, x, y)

  def target_ce(images):
    return tf.nn.sparse_softmax_cross_entropy_with_logits(t, model_fn(images)).numpy()

  before = target_ce(x)
  toward = target_ce(attacks.pgd(model_fn, x, t, EPS, STEP, STEPS, targeted=True, seed=[1, 1]))
  away = target_ce(attacks.pgd(model_fn, x, t, EPS, STEP, STEPS, targeted=False, seed=[1, 1]))
  np.testing.assert_array_less(toward, before)
  np.testing.assert_array_less(before, away)


def _cw_reference(logits, labels, confidence=50.0):
  out = []
  for z, label in zip(logits, labels):
    other = max(z[j] for j in range(len(z)) if j != label)
    out.append(-max(z[label] - other + confidence, 0.0))
  return np.array(out)


def test_cw_margin_loss_matches_numpy():
  rng = np.random.RandomState(2)
  logits = (rng.randn(6, 5) * 30).astype(np.float32)
  labels = rng.randint(0, 5, 6)
  # A margin below -confidence (loss 0), and logits spread by more than 1e4 (the official 1e4
  # mask would pick z_y - 1e4 as the runner-up here).
  logits[0] = [0.0, 100.0, 0.0, 0.0, 0.0]
  labels[0] = 0
  logits[1] = [-2e4, -4e4, -4e4, -4e4, -4e4]
  labels[1] = 0
  ours = attacks.cw_margin_loss(tf.constant(logits), tf.constant(labels)).numpy()
  np.testing.assert_allclose(ours, _cw_reference(logits, labels), rtol=1e-6)
  assert ours[0] == 0.0
  np.testing.assert_allclose(attacks.cw_margin_loss(logits, labels, confidence=0.0),
                             _cw_reference(logits, labels, 0.0), rtol=1e-6)


def test_most_confusing_labels_match_numpy():
  logits = np.array([
      [5.0, 1.0, 3.0, 2.0],     # y is the argmax: the runner-up, 2.
      [5.0, 1.0, 3.0, 2.0],     # y is not the argmax: the argmax, 0.
      [-1.0, -9.0, -3.0, -2.0],  # y is the argmin: the argmax, 0.
      [0.0, 7.0, 6.5, 7.5],     # y is the argmax by a hair: 1.
      [-1e30, -2e30, -3e30, -4e30],  # Huge negative logits, y = 0: 1.
  ], np.float32)
  labels = np.array([0, 2, 1, 3, 0])
  masked = logits.copy()
  masked[np.arange(len(labels)), labels] = -np.inf
  expected = np.argmax(masked, axis=1)
  np.testing.assert_array_equal(expected, [2, 0, 0, 1, 1])
  ours = attacks.most_confusing_labels(tf.constant(logits), tf.constant(labels)).numpy()
  assert ours.dtype == np.int32
  np.testing.assert_array_equal(ours, expected)


def _colour_data(n_per_class, seed):
  """3 classes of 8x8 images at grey 0.5 whose class channel is 0.1 brighter, plus noise.

  Flipping a prediction takes an L-inf change of about 0.05 per channel, below eps = 16/255.
  """
  rng = np.random.RandomState(seed)
  y = np.repeat(np.arange(3), n_per_class).astype(np.int32)
  x = 0.5 + 0.05 * rng.randn(len(y), 8, 8, 3)
  x[np.arange(len(y)), :, :, y] += 0.1
  return np.clip(x, 0, 1).astype(np.float32), y


@pytest.fixture(scope='module')
def trained():
  keras.utils.set_random_seed(3)
  network = helpers.dense_network((8, 8, 3), 3, seed=3)
  x, y = _colour_data(32, seed=4)
  optimizer = keras.optimizers.Adam(0.05)
  optimizer.build(network.trainable_variables)

  @tf.function
  def train_step(images, labels):
    with tf.GradientTape() as tape:
      logits = network(images, training=True)['logits']
      loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
    grads = tape.gradient(loss, network.trainable_variables)
    optimizer.apply(grads, network.trainable_variables)

  for _ in range(200):
    train_step(x, y)
  return network


@pytest.mark.parametrize('name', ['fgsm', 'bim10', 'pgd10', 'cw10', 'mim10'])
def test_attacks_lower_the_accuracy_of_a_trained_model(name, trained):
  x, y = _colour_data(16, seed=5)
  model_fn = _logits_fn(trained)

  def accuracy(images):
    return np.mean(np.argmax(model_fn(images), axis=1) == y)

  clean = accuracy(x)
  attack = attacks.get_attack(name)
  adv = accuracy(tf.function(lambda: attack(model_fn, x, y, 16 / 255, seed=[0, 0]))())
  assert clean >= 0.9
  assert adv <= 0.2, (name, clean, adv)


@pytest.mark.parametrize('name', ['bim', 'pgd', 'cw', 'mim'])
def test_loop_is_in_graph_and_same_shape_batches_do_not_retrace(name):
  network = helpers.dense_network((8, 8, 3), 3)
  model_fn = _logits_fn(network)

  def graph_size(steps):
    attack = attacks.get_attack(f'{name}{steps}')
    fn = tf.function(lambda x, y, seed: attack(model_fn, x, y, EPS, seed=seed))
    graph = fn.get_concrete_function(tf.TensorSpec([4, 8, 8, 3]), tf.TensorSpec([4], tf.int32),
                                     tf.TensorSpec([2], tf.int32)).graph
    return len(graph.get_operations()), {op.type for op in graph.get_operations()}

  # Above the unrolling limit, one loop op holds the model once: 50 steps build the same graph
  # as 30 (unrolled, it would hold 20 more model copies).
  limit = attacks.MAX_UNROLLED_STEPS
  few, op_types = graph_size(limit + 10)
  many, _ = graph_size(50)
  assert op_types & {'While', 'StatelessWhile'}
  assert few == many
  # Up to the limit, on a CPU, the loop is unrolled: no loop op, one copy of the step per step.
  two, op_types = graph_size(2)
  three, _ = graph_size(3)
  assert not op_types & {'While', 'StatelessWhile'}
  assert three - two == graph_size(4)[0] - three > 0

  attack = attacks.get_attack(f'{name}3')
  fn = tf.function(lambda x, y, seed: attack(model_fn, x, y, EPS, seed=seed))
  rng = np.random.RandomState(0)
  for i in range(3):
    x = tf.constant(rng.rand(4, 8, 8, 3).astype(np.float32))
    y = tf.constant(rng.randint(0, 3, 4).astype(np.int32))
    fn(x, y, tf.constant([0, i]))
  assert fn.experimental_get_tracing_count() == 1


def test_step_count_may_be_a_tensor(batch, cnn):
  x, y = batch
  model_fn = _logits_fn(cnn)
  # The images are arguments, as in every real caller: captured as constants, Grappler would fold
  # parts of the projection into them differently in the two graphs (a last-bit difference).
  fn = tf.function(lambda images, steps: attacks.bim(model_fn, images, y, EPS, STEP, steps))
  three = fn(x, tf.constant(3)).numpy()
  fixed = tf.function(lambda images: attacks.bim(model_fn, images, y, EPS, STEP, 3))(x).numpy()
  np.testing.assert_array_equal(three, fixed)
  assert np.max(np.abs(three - x)) > 2.5 * STEP
  fn(x, tf.constant(5))
  assert fn.experimental_get_tracing_count() == 1


def test_registry_parses_the_table_names():
  expected = {
      'fgsm': ('fgsm', 1, None, False, 'ce'),
      'bim10': ('bim', 10, 2 / 255, False, 'ce'),
      'pgd10': ('pgd', 10, 2 / 255, True, 'ce'),
      'PGD20': ('pgd', 20, 2 / 255, True, 'ce'),
      'pgd100': ('pgd', 100, 2 / 255, True, 'ce'),
      'cw10': ('cw', 10, 2 / 255, True, 'cw'),
      'cw20': ('cw', 20, 2 / 255, True, 'cw'),
      'mim40': ('mim', 40, 2 / 255, False, 'ce'),
  }
  for name, (family, steps, step, random_start, loss) in expected.items():
    a = attacks.get_attack(name)
    assert (a.family, a.steps, a.step_size, a.random_start, a.loss) == (
        family, steps, step, random_start, loss), name
    assert a.name == name.lower()
  assert attacks.get_attack('pgd10') == attacks.get_attack('pgd10')
  assert len({attacks.get_attack('pgd10'), attacks.get_attack('pgd10')}) == 1


@pytest.mark.parametrize('name', ['pgd', 'fgsm3', 'foo10', 'pgd0', '', 'pgd-10', 'cw 10', None])
def test_registry_rejects_unknown_names_and_lists_the_valid_forms(name):
  with pytest.raises(UserError) as info:
    attacks.get_attack(name)
  message = str(info.value)
  for form in ('fgsm', 'bim<n>', 'pgd<n>', 'cw<n>', 'mim<n>'):
    assert form in message


def test_registry_attacks_are_the_functions_with_the_paper_defaults(cnn, batch):
  x, y = batch
  model_fn = _logits_fn(cnn)
  seed = tf.constant([5, 6])
  pairs = [
      ('fgsm', attacks.fgsm(model_fn, x, y, EPS)),
      ('bim4', attacks.bim(model_fn, x, y, EPS, 2 / 255, 4)),
      ('pgd4', attacks.pgd(model_fn, x, y, EPS, 2 / 255, 4, seed=seed)),
      ('cw4', attacks.pgd(model_fn, x, y, EPS, 2 / 255, 4, loss='cw', seed=seed)),
      ('mim4', attacks.mim(model_fn, x, y, EPS, 2 / 255, 4, decay=1.0)),
  ]
  results = {}
  for name, expected in pairs:
    got = attacks.get_attack(name)(model_fn, x, y, EPS, seed=seed).numpy()
    np.testing.assert_array_equal(got, expected.numpy(), err_msg=name)
    results[name] = got
  # The five are different attacks, so the comparison above could tell them apart.
  names = sorted(results)
  for i, a in enumerate(names):
    for b in names[i + 1:]:
      assert np.max(np.abs(results[a] - results[b])) > 1e-3, (a, b)


@pytest.mark.parametrize('kind', ['fgsm', 'pgd', 'mim'])
def test_bfloat16_feeds_the_model_only(kind, batch):
  x, y = batch
  x = x[:, :8, :8]
  network = helpers.dense_network((8, 8, 3), 10)
  fed = []

  def model_fn(images):
    fed.append(images.dtype)
    return network(images, training=False)['logits']

  run = {
      'fgsm': lambda: attacks.fgsm(model_fn, x, y, EPS, dtype=tf.bfloat16),
      'pgd': lambda: attacks.pgd(model_fn, x, y, EPS, STEP, 3, random_start=False,
                                 dtype=tf.bfloat16),
      'mim': lambda: attacks.mim(model_fn, x, y, EPS, STEP, 3, dtype=tf.bfloat16),
  }[kind]
  x_adv = tf.function(run)().numpy()
  assert fed and set(fed) == {tf.bfloat16}
  assert x_adv.dtype == np.float32
  # The perturbation is float32 arithmetic on the float32 image: inside the box, every pixel moved
  # by a whole number of float32 steps. Done in bfloat16 (8 bits of mantissa) the image itself
  # would be off by up to 2e-3.
  delta = (x_adv - x) / STEP
  interior = (x > EPS) & (x < 1 - EPS)
  np.testing.assert_allclose(delta[interior], np.round(delta[interior]), atol=1e-4)
  assert np.max(np.abs(x_adv - x)) <= EPS + TOL
  assert np.max(np.abs(delta[interior])) >= 1
