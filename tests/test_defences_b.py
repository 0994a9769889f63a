"""Tests of SML/TLA, Feature Scattering and CAT: the Sinkhorn solver against brute force and NumPy,
hard-negative mining, CAT's budget rule, adaptive labels and checkpointed state, and a train step
of each method on tiny synthetic data."""

import itertools
import os

import numpy as np
import pytest
import tensorflow as tf

from agkd_tf import data
from agkd_tf import methods
from agkd_tf import optim
from agkd_tf import ot
from agkd_tf import strategy_utils
from agkd_tf import train_lib
from agkd_tf.errors import UserError
from agkd_tf.methods import cat
from agkd_tf.methods import sml
from tests import helpers

EPS = 8 / 255


# --- Sinkhorn ---------------------------------------------------------------------------------


def test_cosine_cost_matches_numpy():
  rng = np.random.RandomState(0)
  x, y = rng.randn(4, 5).astype(np.float32), rng.randn(3, 5).astype(np.float32)
  x[1] = -y[2]  # Opposite vectors: 1 - cos = 2.
  cos = (x @ y.T) / np.linalg.norm(x, axis=1)[:, None] / np.linalg.norm(y, axis=1)[None, :]
  np.testing.assert_allclose(ot.cosine_cost(x, y).numpy(), np.maximum(0, 1 - cos), atol=1e-6)
  assert abs(float(ot.cosine_cost(x, y)[1, 2]) - 2.0) < 1e-6


_sinkhorn = tf.function(ot.sinkhorn_plan)  # Eager while loops of 1000s of steps are slow.


@pytest.mark.parametrize('b', [6, 60])
def test_sinkhorn_plan_has_uniform_marginals(b):
  cost = ot.cosine_cost(*np.random.RandomState(b).randn(2, b, 10).astype(np.float32))
  # Run to convergence: both marginals are 1/B.
  plan = _sinkhorn(cost, threshold=1e-7, max_iterations=5000).numpy()
  np.testing.assert_allclose(plan.sum(1), 1 / b, rtol=1e-3)
  np.testing.assert_allclose(plan.sum(0), 1 / b, rtol=1e-3)
  # The official stopping rule: v is updated last, so the columns are exact. The rows are only
  # as close as sum |u - u_prev| < 0.1 makes them, which is loose (up to 50% off at B = 60).
  plan = _sinkhorn(cost).numpy()
  assert (plan >= 0).all()
  np.testing.assert_allclose(plan.sum(0), 1 / b, rtol=1e-4)
  np.testing.assert_allclose(plan.sum(), 1.0, rtol=1e-4)
  row_error = np.abs(plan.sum(1) * b - 1)
  assert row_error.mean() < 0.25 and row_error.max() < 1.0


def test_sinkhorn_matches_brute_force_and_numpy_on_3x3():
  cost = np.array([[0.9, 0.1, 0.7], [0.2, 0.8, 0.6], [0.5, 0.6, 0.05]], np.float32)
  # Brute force over the 3! transport plans between uniform marginals that are permutations:
  # at entropy 0.01 the plan is, to within rounding, the cheapest permutation over 3.
  best = min(itertools.permutations(range(3)), key=lambda p: sum(cost[i, p[i]] for i in range(3)))
  plan = _sinkhorn(cost, threshold=1e-7, max_iterations=5000).numpy()
  want = np.zeros((3, 3))
  want[np.arange(3), best] = 1 / 3
  np.testing.assert_allclose(plan, want, atol=1e-3)
  # At a larger entropy the plan is dense: check it against exp-domain Sinkhorn-Knopp in NumPy.
  kernel = np.exp(-cost.astype(np.float64) / 0.5)
  a = np.ones(3)
  for _ in range(2000):
    b = (1 / 3) / (kernel.T @ a)
    a = (1 / 3) / (kernel @ b)
  plan = _sinkhorn(cost, entropy=0.5, threshold=1e-8, max_iterations=5000).numpy()
  np.testing.assert_allclose(plan, a[:, None] * kernel * b[None, :], atol=1e-5)


def test_gradient_flows_through_the_sinkhorn_iterations():
  rng = np.random.RandomState(1)
  x = tf.constant(rng.randn(8, 5).astype(np.float32))
  y = tf.Variable(rng.randn(8, 5).astype(np.float32))

  @tf.function
  def grads():
    with tf.GradientTape(persistent=True) as tape:
      through = ot.transport_cost(x, y)
      cost = ot.cosine_cost(x, y)
      frozen = tf.reduce_sum(tf.stop_gradient(ot.sinkhorn_plan(cost)) * cost)
    return tape.gradient(through, y), tape.gradient(frozen, y)

  g, g_frozen = (t.numpy() for t in grads())
  assert np.isfinite(g).all() and np.abs(g).max() > 1e-4
  # The plan's own gradient contributes: differentiating through T is not the frozen-plan one.
  assert np.abs(g - g_frozen).max() > 1e-4 * np.abs(g).max()


# --- shared fixtures --------------------------------------------------------------------------


@pytest.fixture(scope='module')
def splits():
  return data.load('synthetic:8', None, 160, 40, 0)


def _method(splits, name, strategy=None, lr=0.01, **config):
  strategy = strategy or tf.distribute.OneDeviceStrategy('/cpu:0')
  fields = dict(label_smoothing=0.0, eps=EPS, step_size=2 / 255, attack_steps=2,
                metric_weight=2.0, margin=0.03, norm_weight=0.001, cat_loss='ce',
                num_train=len(splits.y_train), flip=True)
  fields.update(config)
  with strategy.scope():
    network = helpers.dense_network(num_classes=splits.num_classes, seed=3)
    bank = data.ClassBank(splits.x_train, splits.y_train, splits.num_classes)
    method = methods.build(name, network, splits.num_classes, methods.MethodConfig(**fields),
                           class_bank=bank, seed=5)
    opt = optim.TorchSGD(lr, 0.9, False, 5e-4)
    method.compile(optimizer=opt)
    opt.build(network.trainable_variables)
  return method, strategy


def _batch(splits, n=16, start=0):
  x = tf.constant(splits.x_train[start:start + n], tf.float32) / 255.0
  y = tf.constant(splits.y_train[start:start + n], tf.int32)
  return x, y, tf.range(start, start + n, dtype=tf.int32)


def _stepper(method, strategy, batch):
  """A function running one compiled train step on `batch` and returning the first replica's logs."""
  step = train_lib.make_step_fn(method, strategy, False)
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


def _assert_in_ball(adv, clean, eps):
  adv, clean = np.asarray(adv), np.asarray(clean)
  eps = np.reshape(eps, [-1, 1, 1, 1]) if np.ndim(eps) else eps
  assert (np.abs(adv - clean) <= eps + 1e-6).all()
  assert adv.min() >= 0.0 and adv.max() <= 1.0


def test_registered_with_their_needs(splits):
  assert {'sml', 'feature_scatter', 'cat'} <= set(methods.names())
  assert methods.get('sml').needs_class_bank(None)
  assert methods.get('cat').needs_indices
  assert not methods.get('feature_scatter').needs_indices
  assert methods.get('feature_scatter').default_label_smoothing == 0.5
  with pytest.raises(UserError, match='--attack_steps >= 1'):
    _method(splits, 'feature_scatter', attack_steps=0)
  with pytest.raises(ValueError, match='num_train'):
    _method(splits, 'cat', num_train=0)
  # train_lib gives SML its class bank.
  config = train_lib.TrainConfig(model_dir='unused', model='cnn-cpu', method='sml', epochs=1,
                                 batch_size=16)
  _, method, _ = train_lib.build_method(config, splits, tf.distribute.OneDeviceStrategy('/cpu:0'))
  assert method.class_bank is not None


# --- one step at fixed randomness, per method -------------------------------------------------


@pytest.mark.parametrize('name,config', [
    ('sml', {}), ('feature_scatter', {'attack_steps': 1, 'label_smoothing': 0.5}),
    ('cat', {}), ('cat', {'cat_loss': 'mix'})])
def test_one_step_lowers_the_loss_at_fixed_randomness(splits, name, config):
  method, strategy = _method(splits, name, **config)
  x, y, idx = _batch(splits, 16)
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
  step = _stepper(method, strategy, (x, y, idx))
  logs = step()
  assert all(np.isfinite(v) for v in logs.values())
  assert set(logs) >= set(method.loss_terms) | set(method.accuracies)
  np.testing.assert_allclose(logs['loss'], before, rtol=1e-4)
  assert loss() < before
  # More steps run and stay finite.
  assert all(np.isfinite(v) for v in {**step(), **step()}.values())


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
  method, _ = _method(splits, 'sml')
  x, y, _ = _batch(splits, 16)
  x_adv, x_pos2, negatives, neg_labels = tf.function(method.adversarial_batch)(x, y)
  assert (neg_labels.numpy() != y.numpy()).all()
  _assert_in_ball(x_adv, x, EPS)
  assert x_pos2.shape == x.shape and negatives.shape == x.shape


# --- Feature Scattering -----------------------------------------------------------------------


def test_feature_scatter_step_stays_in_the_ball_and_raises_the_transport(splits):
  method, _ = _method(splits, 'feature_scatter', attack_steps=1, label_smoothing=0.5)
  x, _, _ = _batch(splits, 16)
  x_adv, transport = method.adversarial(x)
  _assert_in_ball(x_adv, x, EPS)
  # A uniform start plus a sign step of size eps: about half the pixels end on the ball's edge.
  moved = np.abs(x_adv.numpy() - x.numpy())
  assert 0.3 < np.mean(np.isclose(moved, EPS, atol=1e-6)) < 0.7
  logits = lambda v: method.network(v, training=False)['logits']
  after = float(ot.transport_cost(logits(x), logits(x_adv)))
  assert after > float(transport)


def test_feature_scatter_multi_step_takes_step_size_steps(splits):
  # The equal-time runs: K steps of --step_size from the same start, each against the clean
  # logits. With K = 3 steps of eps/4 from U(-eps, eps) no pixel can have moved by more than
  # 3 eps / 4 from its (clipped) start (one step of eps would), and the batch scatters further
  # than at x0.
  step = EPS / 4
  method, _ = _method(splits, 'feature_scatter', attack_steps=3, step_size=step,
                      label_smoothing=0.5)
  x, _, _ = _batch(splits, 16)
  seed_state = method.rng.state.numpy()
  x_adv, transport = method.adversarial(x)
  _assert_in_ball(x_adv, x, EPS)
  method.rng.state.assign(seed_state)
  seed = tf.cast(method.rng.make_seeds(1)[:, 0], tf.int32)
  x0 = x + EPS * tf.random.stateless_uniform(tf.shape(x), seed, -1.0, 1.0)
  # P_eps is a projection onto a box holding clip(x0), so it cannot lengthen a move from there.
  assert np.max(np.abs(x_adv.numpy() - np.clip(x0.numpy(), 0, 1))) <= 3 * step + 1e-6
  # And more than one step was taken: pixels the gradient kept pushing moved 2 or 3 steps.
  assert np.mean(np.abs(x_adv.numpy() - np.clip(x0.numpy(), 0, 1)) > 1.5 * step) > 0.05
  logits = lambda v: method.network(v, training=False)['logits']
  assert float(ot.transport_cost(logits(x), logits(x_adv))) > float(transport)


# --- CAT --------------------------------------------------------------------------------------


def test_cat_budget_rule_matches_numpy():
  eps = np.array([0.0, 0.0, 0.01, 0.03, EPS, EPS], np.float32)
  wrong = np.array([False, True, True, False, True, False])
  raised = np.minimum(eps + 0.005, EPS)
  want = np.maximum(np.where(wrong, raised - 0.005, raised), 0)
  got_raised = cat.raise_budgets(eps, EPS).numpy()
  np.testing.assert_allclose(got_raised, raised, atol=1e-7)
  np.testing.assert_allclose(cat.lower_budgets(got_raised, wrong).numpy(), want, atol=1e-7)
  # By hand: raised to 0.005 and kept; raised and lowered back to 0 (and 0.01); capped at eps_max.
  np.testing.assert_allclose(want, [0.005, 0.0, 0.01, EPS, EPS - 0.005, EPS], atol=1e-7)


def test_cat_adaptive_labels_are_distributions():
  labels = tf.constant(np.arange(400) % 10, tf.int32)
  eps = tf.constant(np.linspace(0, EPS, 400), tf.float32)
  q = cat.adaptive_labels(labels, eps, 10, tf.constant([1, 2])).numpy()
  assert (q >= 0).all()
  np.testing.assert_allclose(q.sum(1), 1.0, atol=1e-5)
  q_y = q[np.arange(400), labels.numpy()]
  assert (q_y >= 1 - 10 * eps.numpy() - 1e-6).all()
  np.testing.assert_allclose(q[0], np.eye(10)[0], atol=1e-7)  # eps = 0: the one-hot label.
  # The noise is Dirichlet(1_K): its off-class mass is spread, mean 1/K per class.
  noise = (q - (1 - 10 * eps.numpy()[:, None]) * np.eye(10)[labels.numpy()])[1:]
  noise /= 10 * eps.numpy()[1:, None]
  np.testing.assert_allclose(noise.sum(1), 1.0, atol=1e-4)
  assert abs(noise.mean() - 0.1) < 1e-3 and noise.std() > 0.05
  np.testing.assert_allclose(noise.mean(0), 0.1, atol=0.03)


def test_cat_step_updates_budgets_by_the_rule_inside_per_example_balls(splits):
  method, _ = _method(splits, 'cat')
  x, y, idx = _batch(splits, 16, start=8)
  start = np.zeros(len(splits.y_train), np.float32)
  start[8:24] = np.linspace(0, EPS, 16)
  method.budgets.assign(start)
  terms, predictions = tf.function(method.compute_losses)(x, y, indices=idx)
  wrong = predictions['adv_accuracy'].numpy().argmax(1) != y.numpy()
  raised = np.minimum(start[8:24] + 0.005, EPS)
  want = start.copy()
  want[8:24] = np.maximum(np.where(wrong, raised - 0.005, raised), 0)
  np.testing.assert_allclose(method.budgets.numpy(), want, atol=1e-7)
  np.testing.assert_allclose(float(terms['mean_eps']), want[8:24].mean(), rtol=1e-5)
  # The attack stays in each example's own ball (eps_i, after the raise).
  targets = cat.adaptive_labels(y, raised, splits.num_classes, tf.constant([0, 1]))
  x_adv = method.adversarial(x, y, targets, tf.constant(raised))
  _assert_in_ball(x_adv, x, raised)
  assert np.abs(x_adv.numpy() - x.numpy()).max() > 0.0


def test_cat_budgets_survive_a_checkpoint(splits, tmp_path):
  method, strategy = _method(splits, 'cat')
  step = _stepper(method, strategy, _batch(splits, 16))
  step()
  step()
  saved = method.budgets.numpy()
  assert (saved > 0).any()
  path = tf.train.Checkpoint(method=method).save(str(tmp_path / 'ckpt'))
  fresh, _ = _method(splits, 'cat')
  assert not fresh.budgets.numpy().any()
  tf.train.Checkpoint(method=fresh).restore(path).assert_existing_objects_matched()
  np.testing.assert_array_equal(fresh.budgets.numpy(), saved)


def test_cat_training_run_checkpoints_and_resumes_its_budgets(tmp_path):
  strategy = tf.distribute.OneDeviceStrategy('/cpu:0')

  def config(name, steps):
    return train_lib.TrainConfig(
        model_dir=str(tmp_path / name), dataset='synthetic:8', train_examples=64,
        test_examples=20, model='cnn-cpu', method='cat', epochs=2, batch_size=32, lr=0.05,
        lr_schedule='constant', attack_steps=1, eval_attack_steps=0, verbose=0, export=False,
        max_steps=steps, seed=1)

  train_lib.train(config('run', 2), strategy=strategy)
  ckpt = tf.train.latest_checkpoint(str(tmp_path / 'run' / 'checkpoints'))
  shapes = {n: s for n, s in tf.train.list_variables(ckpt) if 'budgets' in n}
  assert list(shapes.values()) == [[64]], shapes
  train_lib.train(config('run', 3), strategy=strategy)
  train_lib.train(config('straight', 3), strategy=strategy)

  def budgets(name):
    path = tf.train.latest_checkpoint(str(tmp_path / name / 'checkpoints'))
    assert path.endswith('-3')
    reader = tf.train.load_checkpoint(path)
    return reader.get_tensor(next(n for n in reader.get_variable_to_shape_map() if 'budgets' in n))

  # The resumed run continues from the saved budgets: it ends where the uninterrupted one does.
  np.testing.assert_allclose(budgets('run'), budgets('straight'), atol=1e-7)
  assert (budgets('run') > 0).any()


def test_cat_budgets_stay_equal_across_mirrored_replicas(splits):
  strategy = strategy_utils.mirrored_cpu(['/cpu:0', '/cpu:1'])
  method, _ = _method(splits, 'cat', strategy=strategy)
  # Each replica writes its own half of the global batch; every copy must get both halves.
  idx = strategy.experimental_distribute_values_from_function(
      lambda ctx: tf.constant([3, 7]) + 50 * ctx.replica_id_in_sync_group)
  val = strategy.experimental_distribute_values_from_function(
      lambda ctx: tf.constant([0.01, 0.02]) + 0.001 * tf.cast(ctx.replica_id_in_sync_group,
                                                               tf.float32))
  tf.function(lambda i, v: strategy.run(method.store_budgets, args=(i, v)))(idx, val)
  want = np.zeros(len(splits.y_train), np.float32)
  want[[3, 7, 53, 57]] = [0.01, 0.02, 0.011, 0.021]
  copies = strategy.experimental_local_results(method.budgets)
  assert len(copies) == 2
  for copy in copies:
    np.testing.assert_allclose(copy.numpy(), want, atol=1e-7)
  # A full mirrored train step keeps the copies equal, and touches only the batch's examples.
  _stepper(method, strategy, _batch(splits, 16, start=100))()
  first, second = (c.numpy() for c in strategy.experimental_local_results(method.budgets))
  np.testing.assert_array_equal(first, second)
  changed = np.flatnonzero(first != want)
  assert set(changed) <= set(range(100, 116)) and len(changed) > 0
