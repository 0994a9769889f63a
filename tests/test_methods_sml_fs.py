"""SML/TLA and Feature Scattering: registration and needs, hard-negative mining, the attacks'
balls and objectives, and one training step at fixed randomness."""

import numpy as np
import pytest
import tensorflow as tf

from agkd_tf import methods
from agkd_tf.core import ot
from agkd_tf import train_lib
from agkd_tf.core.errors import UserError
from agkd_tf.methods import sml
from tests import bank_methods


@pytest.fixture(scope='module')
def splits():
  return bank_methods.splits()


def test_registered_with_their_needs(splits):
  assert {'sml', 'feature_scatter', 'cat'} <= set(methods.names())
  assert methods.get('sml').needs_class_bank(None)
  assert methods.get('cat').needs_indices
  assert not methods.get('feature_scatter').needs_indices
  assert methods.get('feature_scatter').default_label_smoothing == 0.5
  with pytest.raises(UserError, match='--attack_steps >= 1'):
    bank_methods.build(splits, 'feature_scatter', attack_steps=0)
  with pytest.raises(ValueError, match='num_train'):
    bank_methods.build(splits, 'cat', num_train=0)
  # train_lib gives SML its class bank.
  config = train_lib.TrainConfig(model_dir='unused', model='cnn-cpu', method='sml', epochs=1,
                                 batch_size=16)
  _, method, _ = train_lib.build_method(config, splits, tf.distribute.OneDeviceStrategy('/cpu:0'))
  assert method.class_bank is not None


@pytest.mark.parametrize('name,config', [
    ('sml', {}), ('feature_scatter', {'attack_steps': 1, 'label_smoothing': 0.5})])
def test_one_step_lowers_the_loss_at_fixed_randomness(splits, name, config):
  bank_methods.one_step_lowers_the_loss(splits, name, config)


# --- SML --------------------------------------------------------------------------------------


def test_hardest_negative_is_the_most_similar_other_class():
  rng = np.random.RandomState(2)
  anchors, pool = rng.randn(5, 4).astype(np.float32), rng.randn(30, 4).astype(np.float32)
  labels, pool_labels = rng.randint(0, 3, 5), rng.randint(0, 3, 30)
  pool[7] = anchors[0] * 2.0  # The most similar of all, but the anchor's own class:
  pool_labels[7] = labels[0]  # it must be skipped.
  got = sml.SML.hardest_negatives(anchors, labels, pool, pool_labels).numpy()
  a = anchors / np.linalg.norm(anchors, axis=1, keepdims=True)
  p = pool / np.linalg.norm(pool, axis=1, keepdims=True)
  cos = np.where(labels[:, None] == pool_labels[None, :], -np.inf, a @ p.T)
  np.testing.assert_array_equal(got, cos.argmax(1))
  assert (pool_labels[got] != labels).all()


def test_sml_batch_negatives_differ_in_class_and_anchors_stay_in_the_ball(splits):
  method, _ = bank_methods.build(splits, 'sml')
  x, y, _ = bank_methods.batch(splits, 16)
  x_adv, x_pos2, negatives, neg_labels = tf.function(method.adversarial_batch)(x, y)
  assert (neg_labels.numpy() != y.numpy()).all()
  bank_methods.assert_in_ball(x_adv, x, bank_methods.EPS)
  assert x_pos2.shape == x.shape and negatives.shape == x.shape


# --- Feature Scattering -----------------------------------------------------------------------


def test_sml_draws_bank_images_as_they_are_under_noaugment(splits):
  method, _ = bank_methods.build(splits, 'sml', augment=False)
  seeds = tf.constant([[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]], tf.int32)  # [2, streams]
  pool, pool_labels = method.draw_pool(24, seeds)
  x = splits.x_train.astype(np.float32) / 255.0
  for img, c in zip(pool.numpy(), pool_labels.numpy()):
    assert min(np.abs(x[i] - img).max() for i in np.flatnonzero(splits.y_train == c)) < 1e-6
  augmented, _ = bank_methods.build(splits, 'sml')
  # With augmentation, the same draw is cropped or flipped somewhere in the pool.
  moved, _ = augmented.draw_pool(24, seeds)
  assert np.abs(moved.numpy() - pool.numpy()).max() > 1e-3


def test_feature_scatter_step_stays_in_the_ball_and_raises_the_transport(splits):
  method, _ = bank_methods.build(splits, 'feature_scatter', attack_steps=1, label_smoothing=0.5)
  x, _, _ = bank_methods.batch(splits, 16)
  x_adv, transport = method.adversarial(x)
  bank_methods.assert_in_ball(x_adv, x, bank_methods.EPS)
  # A uniform start plus a sign step of size eps: about half the pixels end on the ball's edge.
  moved = np.abs(x_adv.numpy() - x.numpy())
  assert 0.3 < np.mean(np.isclose(moved, bank_methods.EPS, atol=1e-6)) < 0.7
  logits = lambda v: method.network(v, training=False)['logits']
  after = float(ot.transport_cost(logits(x), logits(x_adv)))
  assert after > float(transport)


def test_feature_scatter_multi_step_takes_step_size_steps(splits):
  # The equal-time runs: K steps of --step_size from the same start, each against the clean
  # logits. With K = 3 steps of eps/4 from U(-eps, eps) no pixel can have moved by more than
  # 3 eps / 4 from its (clipped) start (one step of eps would), and the batch scatters further
  # than at x0.
  step = bank_methods.EPS / 4
  method, _ = bank_methods.build(splits, 'feature_scatter', attack_steps=3, step_size=step,
                      label_smoothing=0.5)
  x, _, _ = bank_methods.batch(splits, 16)
  seed_state = method.rng.state.numpy()
  x_adv, transport = method.adversarial(x)
  bank_methods.assert_in_ball(x_adv, x, bank_methods.EPS)
  method.rng.state.assign(seed_state)
  seed = tf.cast(method.rng.make_seeds(1)[:, 0], tf.int32)
  x0 = x + bank_methods.EPS * tf.random.stateless_uniform(tf.shape(x), seed, -1.0, 1.0)
  # P_eps is a projection onto a box holding clip(x0), so it cannot lengthen a move from there.
  assert np.max(np.abs(x_adv.numpy() - np.clip(x0.numpy(), 0, 1))) <= 3 * step + 1e-6
  # And more than one step was taken: pixels the gradient kept pushing moved 2 or 3 steps.
  assert np.mean(np.abs(x_adv.numpy() - np.clip(x0.numpy(), 0, 1)) > 1.5 * step) > 0.05
  logits = lambda v: method.network(v, training=False)['logits']
  assert float(ot.transport_cost(logits(x), logits(x_adv))) > float(transport)
