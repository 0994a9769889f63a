"""CAT: the budget rule against NumPy, adaptive labels, per-example balls, budgets through a
checkpoint, a resumed run and mirrored replicas, and one training step at fixed randomness."""

import numpy as np
import pytest
import tensorflow as tf

from agkd_tf import strategy_utils
from agkd_tf import train_lib
from agkd_tf.methods import cat
from tests import bank_methods


@pytest.fixture(scope='module')
def splits():
  return bank_methods.splits()


@pytest.mark.parametrize('config', [{}, {'cat_loss': 'mix'}])
def test_one_step_lowers_the_loss_at_fixed_randomness(splits, config):
  bank_methods.one_step_lowers_the_loss(splits, 'cat', config)


def test_cat_budget_rule_matches_numpy():
  eps = np.array([0.0, 0.0, 0.01, 0.03, bank_methods.EPS, bank_methods.EPS], np.float32)
  wrong = np.array([False, True, True, False, True, False])
  raised = np.minimum(eps + 0.005, bank_methods.EPS)
  want = np.maximum(np.where(wrong, raised - 0.005, raised), 0)
  got_raised = cat.raise_budgets(eps, bank_methods.EPS).numpy()
  np.testing.assert_allclose(got_raised, raised, atol=1e-7)
  np.testing.assert_allclose(cat.lower_budgets(got_raised, wrong).numpy(), want, atol=1e-7)
  # By hand: raised to 0.005 and kept; raised and lowered back to 0 (and 0.01); capped at eps_max.
  cap = bank_methods.EPS
  np.testing.assert_allclose(want, [0.005, 0.0, 0.01, cap, cap - 0.005, cap], atol=1e-7)


def test_cat_adaptive_labels_are_distributions():
  labels = tf.constant(np.arange(400) % 10, tf.int32)
  eps = tf.constant(np.linspace(0, bank_methods.EPS, 400), tf.float32)
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
  method, _ = bank_methods.build(splits, 'cat')
  x, y, idx = bank_methods.batch(splits, 16, start=8)
  start = np.zeros(len(splits.y_train), np.float32)
  start[8:24] = np.linspace(0, bank_methods.EPS, 16)
  method.budgets.assign(start)
  terms, predictions = tf.function(method.compute_losses)(x, y, indices=idx)
  wrong = predictions['adv_accuracy'].numpy().argmax(1) != y.numpy()
  raised = np.minimum(start[8:24] + 0.005, bank_methods.EPS)
  want = start.copy()
  want[8:24] = np.maximum(np.where(wrong, raised - 0.005, raised), 0)
  np.testing.assert_allclose(method.budgets.numpy(), want, atol=1e-7)
  np.testing.assert_allclose(float(terms['mean_eps']), want[8:24].mean(), rtol=1e-5)
  # The attack stays in each example's own ball (eps_i, after the raise).
  targets = cat.adaptive_labels(y, raised, splits.num_classes, tf.constant([0, 1]))
  x_adv = method.adversarial(x, y, targets, tf.constant(raised))
  bank_methods.assert_in_ball(x_adv, x, raised)
  assert np.abs(x_adv.numpy() - x.numpy()).max() > 0.0


def test_cat_budgets_survive_a_checkpoint(splits, tmp_path):
  method, strategy = bank_methods.build(splits, 'cat')
  step = bank_methods.stepper(method, strategy, bank_methods.batch(splits, 16))
  step()
  step()
  saved = method.budgets.numpy()
  assert (saved > 0).any()
  path = tf.train.Checkpoint(method=method).save(str(tmp_path / 'ckpt'))
  fresh, _ = bank_methods.build(splits, 'cat')
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
  method, _ = bank_methods.build(splits, 'cat', strategy=strategy)
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
  bank_methods.stepper(method, strategy, bank_methods.batch(splits, 16, start=100))()
  first, second = (c.numpy() for c in strategy.experimental_local_results(method.budgets))
  np.testing.assert_array_equal(first, second)
  changed = np.flatnonzero(first != want)
  assert set(changed) <= set(range(100, 116)) and len(changed) > 0
