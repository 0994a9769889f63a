"""Tests of AGKD-BML (Wang et al., ICCV 2021): loss terms against NumPy, the step's pieces,
every ablation variant, the frozen teacher, and MirroredStrategy equality."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from agkd_tf import attacks
from agkd_tf import data
from agkd_tf.core import losses
from agkd_tf import methods
from agkd_tf import run_dir
from agkd_tf import strategy_utils
from agkd_tf import train_lib
from agkd_tf import train_step
from agkd_tf.core.errors import UserError
from agkd_tf.methods import agkd_bml
from tests import helpers

K = 10


def _softmax(z):
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def test_mart_terms_match_numpy():
  rng = np.random.RandomState(0)
  zc, za = rng.randn(6, K).astype(np.float32) * 3, rng.randn(6, K).astype(np.float32) * 3
  y = rng.randint(0, K, 6)
  za[0, y[0]] = 50.0  # The adversarial top class is y: y' must be the runner-up.
  bce, kl = losses.mart_terms(zc, za, y, beta=6.0)
  pa, pc = _softmax(za.astype(np.float64)), _softmax(zc.astype(np.float64))
  order = np.argsort(-pa, axis=1)
  wrong = np.where(order[:, 0] == y, order[:, 1], order[:, 0])
  want_bce = np.mean(-np.log(1.0001 - pa[np.arange(6), wrong] + 1e-12))
  kl_i = (pc * (np.log(pc) - np.log(pa + 1e-12))).sum(1)
  want_kl = 6.0 * np.mean(kl_i * (1.0000001 - pc[np.arange(6), y]))
  np.testing.assert_allclose(float(bce), want_bce, rtol=1e-4)
  np.testing.assert_allclose(float(kl), want_kl, rtol=1e-4)


def test_official_lsce_on_adversarial_logits():
  z = np.array([[2.0, 0.5, -1.0]], np.float32)
  got = float(losses.cross_entropy(z, np.array([0]), 3, 0.5)[0])
  logp = np.log(_softmax(z.astype(np.float64)))[0]
  np.testing.assert_allclose(got, -(0.5 * logp[0] + 0.25 * logp[1] + 0.25 * logp[2]), rtol=1e-5)


def test_attention_min_max_and_its_guard():
  rng = np.random.RandomState(1)
  f = rng.rand(2, 4, 4, 3).astype(np.float32)
  f[1] = 0.7  # A constant map: the guarded division gives zeros, never NaN.
  a = agkd_bml.attention(f, 'channel_sum').numpy()
  s = f[0].sum(-1)
  np.testing.assert_allclose(a[0], (s - s.min()) / (s - s.min()).max(), rtol=1e-5)
  np.testing.assert_array_equal(a[1], np.zeros((4, 4)))
  assert a[0].min() == 0.0 and abs(a[0].max() - 1.0) < 1e-6


def test_angular_distance_with_the_clamp_and_the_triplet():
  a = np.array([[1.0, 0.0], [1.0, 1.0], [3.0, 4.0]], np.float32)
  b = np.array([[-2.0, 0.0], [1.0, 1.0], [4.0, -3.0]], np.float32)
  # Opposite vectors are at distance 0 (|cos|); identical ones too, even where rounding makes
  # cos slightly above 1 (the clamp); orthogonal ones at 1.
  np.testing.assert_allclose(angular_distance := losses.angular_distance(a, b).numpy(),
                             [0.0, 0.0, 1.0], atol=1e-6)
  assert (angular_distance >= 0).all()
  rng = np.random.RandomState(2)
  e1, e2, e3 = (rng.randn(5, 4).astype(np.float32) for _ in range(3))

  def d(u, v):
    cos = (u * v).sum(1) / np.linalg.norm(u, axis=1) / np.linalg.norm(v, axis=1)
    return 1 - np.abs(np.minimum(cos, 1.0))
  want = (np.maximum(0, 0.03 + d(e1, e2) - d(e1, e3)).mean()
          + 0.001 * ((e1 ** 2).mean() + (e2 ** 2).mean() + (e3 ** 2).mean()))
  np.testing.assert_allclose(float(losses.angular_triplet(e1, e2, e3, 0.03, 0.001)), want,
                             rtol=1e-5)


def test_gradcam_alpha_equals_the_tape_gradient():
  """For a GAP + dense head, alpha_k = mean_ij dz_c/dF_kij = W_kc / (H W): checked by autodiff."""
  network = helpers.dense_network(seed=4)
  x = tf.constant(np.random.RandomState(3).rand(3, 8, 8, 3).astype(np.float32))
  classes = tf.constant([0, 2, 1])
  head = keras.Sequential([network.layers[-2], network.layers[-1]])  # GAP, Dense.
  fmap = network(x)['feature_map']
  with tf.GradientTape() as tape:
    tape.watch(fmap)
    z = tf.reduce_sum(head(fmap) * tf.one_hot(classes, 3))
  alpha_tape = tf.reduce_mean(tape.gradient(z, fmap), axis=[1, 2])
  want = tf.nn.relu(tf.einsum('bhwc,bc->bhw', fmap, alpha_tape))
  got = agkd_bml.attention(fmap, 'gradcam_orig', agkd_bml.classifier_kernel(network), classes)
  np.testing.assert_allclose(got.numpy(), losses.min_max_normalise(want).numpy(), atol=1e-5)


def test_most_confusing_label_is_the_top_other_class():
  z = tf.constant([[5.0, 4.0, 1.0], [0.0, 3.0, 2.0], [1.0, 1.0, 9.0]])
  np.testing.assert_array_equal(attacks.most_confusing_labels(z, tf.constant([0, 1, 1])).numpy(),
                                [1, 2, 2])


@pytest.fixture(scope='module')
def splits():
  return data.load('synthetic:8', None, 160, 40, 0)


def _method(splits, strategy=None, make=None, lr=0.05, **config):
  strategy = strategy or tf.distribute.OneDeviceStrategy('/cpu:0')
  make = make or (lambda seed: helpers.dense_network(num_classes=splits.num_classes, seed=seed))
  fields = dict(label_smoothing=0.5, eps=8 / 255, step_size=2 / 255, attack_steps=2,
                agkd_mart=True,
                mart_beta=6.0, attention='channel_sum', metric='bml', metric_weight=2.0,
                margin=0.03, norm_weight=0.001)
  fields.update(config)
  facts = {k: fields.pop(k) for k in ('flip', 'augment', 'num_train') if k in fields}
  with strategy.scope():
    teacher = make(10)
    network = make(10)
    network.set_weights(teacher.get_weights())
    bank = data.ClassBank(splits.x_train, splits.y_train, splits.num_classes)
    method = methods.build('agkd_bml', network, splits.num_classes,
                           methods.MethodConfig(**fields), teacher=teacher, class_bank=bank,
                           seed=5, **facts)
    helpers.compile_with_sgd(method, network, lr)
  return method, strategy


def _batch(splits, n=16):
  return helpers.fixed_batch(splits, n)


def test_targeted_pgd_lowers_the_target_loss_and_stays_in_the_ball(splits):
  method, _ = _method(splits)
  x1, y1 = _batch(splits)
  y_mc, x1_adv, x2, x2_adv = method.adversarial_batch(x1, y1)
  assert (y_mc.numpy() != y1.numpy()).all()
  logits = lambda x: method.network(x, training=False)['logits']
  before = losses.cross_entropy(logits(x1), y_mc).numpy().mean()
  after = losses.cross_entropy(logits(x1_adv), y_mc).numpy().mean()
  assert after < before
  back_before = losses.cross_entropy(logits(x2), y1).numpy().mean()
  back_after = losses.cross_entropy(logits(x2_adv), y1).numpy().mean()
  assert back_after < back_before
  for clean, adv in ((x1, x1_adv), (x2, x2_adv)):
    assert np.abs(adv.numpy() - clean.numpy()).max() <= 8 / 255 + 1e-6
    assert adv.numpy().min() >= 0.0 and adv.numpy().max() <= 1.0


def test_every_backward_sample_has_the_most_confusing_label(splits):
  method, _ = _method(splits)
  classes = tf.constant(np.random.RandomState(0).randint(0, splits.num_classes, 64), tf.int32)
  images, labels = method.draw_backward_samples(classes)
  np.testing.assert_array_equal(labels.numpy(), classes.numpy())
  # The images really are augmented bank images of those classes: some training image of class
  # c, padded by 4, cropped at some offset and maybe flipped, gives each one exactly.
  x = splits.x_train.astype(np.float32) / 255.0
  padded = np.pad(x, [(0, 0), (4, 4), (4, 4), (0, 0)])
  for img, c in zip(images.numpy()[:6], classes.numpy()[:6]):
    found = False
    for i in np.flatnonzero(splits.y_train == c):
      for oy in range(9):
        for ox in range(9):
          crop = padded[i, oy:oy + 8, ox:ox + 8]
          if (np.abs(crop - img).max() < 1e-6 or np.abs(crop[:, ::-1] - img).max() < 1e-6):
            found = True
    assert found, f'a drawn image is not an augmented training image of class {c}'
  # In-graph: the draw traces once and runs under tf.function.
  draw = tf.function(method.draw_backward_samples)
  np.testing.assert_array_equal(draw(classes)[1].numpy(), classes.numpy())


def test_backward_samples_are_not_augmented_under_noaugment(splits):
  method, _ = _method(splits, augment=False)
  classes = tf.constant(np.random.RandomState(1).randint(0, splits.num_classes, 32), tf.int32)
  images, labels = method.draw_backward_samples(classes)
  np.testing.assert_array_equal(labels.numpy(), classes.numpy())
  x = splits.x_train.astype(np.float32) / 255.0
  for img, c in zip(images.numpy(), classes.numpy()):
    # Exactly a training image of class c: no crop offset, no flip.
    assert min(np.abs(x[i] - img).max() for i in np.flatnonzero(splits.y_train == c)) < 1e-6


def _steps(method, strategy, batch, n):
  step = train_step.make_step_fn(method, strategy, False)
  ds = tf.data.Dataset.from_tensors(batch).repeat()
  if strategy.num_replicas_in_sync > 1:
    ds = strategy.experimental_distribute_dataset(ds.unbatch().batch(int(batch[1].shape[0])))
  it = iter(ds)
  out = []
  for _ in range(n):
    for m in method.metrics:
      m.reset_state()
    logs = step(it)
    out.append({k: float(strategy.experimental_local_results(v)[0]) for k, v in logs.items()})
  return out


def test_one_step_on_a_fixed_batch_lowers_the_total_loss(splits):
  # A small step: the min-max normalised attention of a 4-channel network is steep.
  method, strategy = _method(splits, lr=0.005)
  x, y = _batch(splits, 32)

  def total_at_step_zero():
    # The same PGD starts and bank draws both times: they are seeded by the optimiser step.
    method.optimizer.iterations.assign(0)
    return float(method.compute_losses(x, y)[0]['loss'])

  before = total_at_step_zero()
  logs = _steps(method, strategy, (x, y), 1)[0]
  assert all(np.isfinite(v) for v in logs.values())
  assert set(logs) >= set(method.loss_terms) | set(method.accuracies)
  np.testing.assert_allclose(logs['loss'], before, rtol=1e-4)
  assert total_at_step_zero() < before


@pytest.mark.parametrize('attention', agkd_bml.ATTENTIONS)
@pytest.mark.parametrize('metric', agkd_bml.METRICS)
def test_every_attention_and_metric_variant_runs_one_step(splits, attention, metric):
  method, strategy = _method(splits, attention=attention, metric=metric, agkd_mart=metric != 'sml')
  logs = _steps(method, strategy, _batch(splits, 8), 1)[0]
  assert all(np.isfinite(v) for v in logs.values())
  assert (logs['attention'] == 0.0) == (attention == 'none')
  assert (logs['triplet'] == 0.0) == (metric == 'none')
  images = method.attention_images(*_batch(splits, 4))
  assert images['attention/student_adv'].shape == (4, 8, 8, 1)


def test_untargeted_variant_raises_the_true_class_loss_and_keeps_the_backward_attack(splits):
  targeted, _ = _method(splits)
  untargeted, _ = _method(splits, agkd_attack='untargeted')
  x1, y1 = _batch(splits)
  logits = lambda x: untargeted.network(x, training=False)['logits']
  y_mc, x1_adv, _, x2_adv = untargeted.adversarial_batch(x1, y1)
  assert (losses.cross_entropy(logits(x1_adv), y1).numpy().mean() >
          losses.cross_entropy(logits(x1), y1).numpy().mean())
  assert np.abs(x1_adv.numpy() - x1.numpy()).max() <= 8 / 255 + 1e-6
  # Same weights and seeds: y_mc and the backward x2' are the official ones; only x1' differs.
  y_mc_t, x1_adv_t, _, x2_adv_t = targeted.adversarial_batch(x1, y1)
  np.testing.assert_array_equal(y_mc.numpy(), y_mc_t.numpy())
  np.testing.assert_allclose(x2_adv.numpy(), x2_adv_t.numpy(), atol=1e-6)
  assert np.abs(x1_adv.numpy() - x1_adv_t.numpy()).max() > 1e-3


def test_trades_loss_variant_is_natural_ce_plus_beta_kl(splits):
  method, _ = _method(splits, agkd_loss='trades', trades_beta=3.0, attention='none',
                      metric='none')
  x, y = _batch(splits, 8)
  method.optimizer.iterations.assign(0)
  terms, logits = method.compute_losses(x, y)
  method.optimizer.iterations.assign(0)
  _, x_adv, _, _ = method.adversarial_batch(x, tf.cast(y, tf.int32))
  # The single BN-train pass of compute_losses over [x1', x1]: recompute it the same way.
  z = method.network(tf.concat([x_adv, x], 0), training=True)['logits'].numpy().astype(np.float64)
  z_adv, z_clean = z[:8], z[8:]
  log_softmax = lambda v: v - np.log(np.exp(v - v.max(1, keepdims=True)).sum(1, keepdims=True)) - (
      v.max(1, keepdims=True))
  lp, lq = log_softmax(z_clean), log_softmax(z_adv)
  ce = -lp[np.arange(8), y.numpy()].mean()
  kl = (np.exp(lp) * (lp - lq)).sum(1).mean()
  np.testing.assert_allclose(float(terms['lsce']), ce, rtol=1e-4)
  np.testing.assert_allclose(float(terms['mart_kl']), 3.0 * kl, rtol=1e-3, atol=1e-6)
  assert float(terms['mart_bce']) == 0.0
  np.testing.assert_allclose(float(terms['loss']), ce + 3.0 * kl, rtol=1e-4)
  np.testing.assert_allclose(logits['clean_accuracy'].numpy(), z_clean, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('name,value', [('agkd_loss', 'kl'), ('agkd_attack', 'both')])
def test_unknown_variant_names_are_refused(splits, name, value):
  with pytest.raises(ValueError, match=name):
    _method(splits, **{name: value})
  with pytest.raises(UserError, match=f'unknown {name}'):
    train_lib.check_method_hparams(train_lib.TrainConfig(model_dir='x', **{name: value}))


@pytest.fixture(scope='module')
def teacher_run(tmp_path_factory, splits):
  path = str(tmp_path_factory.mktemp('teacher') / 'run')
  config = train_lib.TrainConfig(model_dir=path, dataset='synthetic:8', model='cnn-cpu',
                                 epochs=1, batch_size=32, lr=0.05, lr_schedule='constant',
                                 eval_attack_steps=0, verbose=0, export=False)
  train_lib.train(config, strategy=tf.distribute.OneDeviceStrategy('/cpu:0'), splits=splits)
  return path


def test_student_starts_from_the_teacher_which_never_changes(splits, teacher_run):
  strategy = tf.distribute.OneDeviceStrategy('/cpu:0')
  config = train_lib.TrainConfig(model_dir='unused', model='cnn-cpu', method='agkd_bml',
                                 teacher_dir=teacher_run, attack_steps=1, lr=0.05,
                                 lr_schedule='constant', epochs=1, batch_size=16)
  network, method, _ = train_lib.build_method(config, splits, strategy)
  saved, _ = run_dir.load_network(teacher_run)
  for a, b in zip(network.weights, saved.weights):
    np.testing.assert_array_equal(a.numpy(), b.numpy())
  assert not method.teacher.trainable_variables
  start = [w.numpy().copy() for w in network.trainable_weights]
  _steps(method, strategy, _batch(splits, 16), 3)
  for a, b in zip(method.teacher.weights, saved.weights):  # BN statistics included.
    np.testing.assert_array_equal(a.numpy(), b.numpy())
  assert any(np.abs(a - w.numpy()).max() > 0 for a, w in zip(start, network.trainable_weights))


def test_teacher_must_match_and_must_be_given(splits, teacher_run):
  strategy = tf.distribute.OneDeviceStrategy('/cpu:0')
  with pytest.raises(UserError, match='needs a teacher'):
    train_lib.build_method(train_lib.TrainConfig(model_dir='u', model='cnn-cpu',
                                                 method='agkd_bml'), splits, strategy)
  with pytest.raises(UserError, match='model=cnn-cpu'):
    train_lib.build_method(train_lib.TrainConfig(model_dir='u', model='wrn-16-4',
                                                 method='agkd_bml', teacher_dir=teacher_run),
                           splits, strategy)


def test_teacher_train_then_student_in_one_command(tmp_path, splits):
  config = train_lib.TrainConfig(
      model_dir=str(tmp_path / 'student'), dataset='synthetic:8', model='cnn-cpu',
      method='agkd_bml', teacher='train', teacher_epochs=1, epochs=1, batch_size=32,
      attack_steps=1, lr=0.05, lr_schedule='constant', eval_examples=20, eval_attack_steps=1,
      verbose=0, export=False, label_smoothing=0.5)
  result = train_lib.train(config, strategy=tf.distribute.OneDeviceStrategy('/cpu:0'),
                           splits=splits)
  assert result['method'] == 'agkd_bml'
  teacher = os.path.join(config.model_dir, 'teacher')
  assert os.path.isfile(os.path.join(teacher, 'result.json'))
  assert train_lib.io_utils.read_json(os.path.join(teacher, 'flags.json'))['method'] == 'natural'
  # Attention maps reach TensorBoard every epoch.
  events = os.path.join(config.model_dir, 'summaries', 'train')
  tags = set()
  for f in os.listdir(events):
    for record in tf.compat.v1.train.summary_iterator(os.path.join(events, f)):
      tags.update(v.tag for v in record.summary.value)
  assert {'attention/student_adv', 'attention/teacher_clean', 'epoch/triplet'} <= tags


def test_mirrored_strategy_equals_one_device(splits):
  batch = _batch(splits, 16)
  one, s1 = _method(splits)
  _steps(one, s1, batch, 2)
  two, s2 = _method(splits, strategy=strategy_utils.mirrored_cpu(['/cpu:0', '/cpu:1']))
  _steps(two, s2, batch, 2)
  for a, b in zip(one.network.weights, two.network.weights):
    np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)
