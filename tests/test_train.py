"""Tests of the training loop: learning, tf.distribute equality, resume and export."""

import dataclasses
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from agkd_tf import data
from agkd_tf import evaluation
from agkd_tf import methods
from agkd_tf import models
from agkd_tf import optim
from agkd_tf import run_dir
from agkd_tf import strategy_utils
from agkd_tf import train_lib
from agkd_tf import train_step
from agkd_tf.core.errors import UserError
from agkd_tf.evaluation import runner as runner_lib
from tests import helpers


def _config(tmp_path, **overrides):
  values = dict(model_dir=str(tmp_path / 'run'), dataset='synthetic:8', train_examples=256,
                test_examples=64, model='cnn-cpu', epochs=2, batch_size=32, lr=0.05,
                lr_schedule='constant', eval_examples=32, eval_attack_steps=2,
                checkpoint_every_steps=5, log_every_steps=4, verbose=0, seed=1)
  values.update(overrides)
  return train_lib.TrainConfig(**values)


def test_natural_training_learns_and_writes_the_run_directory(tmp_path):
  config = _config(tmp_path, epochs=6)
  strategy = tf.distribute.OneDeviceStrategy('/cpu:0')
  result = train_lib.train(config, strategy=strategy)
  assert result['steps'] == 6 * (256 // 32)
  # Ten synthetic classes: chance is 0.1. The margin allows for thread-order nondeterminism.
  assert result['clean_accuracy'] > 0.3
  assert 0.0 <= result['pgd2_accuracy'] <= 1.0
  for name in ('flags.json', 'result.json', 'model_spec.json'):
    assert os.path.isfile(os.path.join(config.model_dir, name))
  assert tf.train.latest_checkpoint(os.path.join(config.model_dir, 'checkpoints'))
  events = [f for _, _, fs in os.walk(os.path.join(config.model_dir, 'summaries')) for f in fs]
  assert len(events) >= 2


def test_loss_goes_down_on_a_fixed_batch():
  splits = data.load('synthetic:8', None, 64, 16, 0)
  strategy = tf.distribute.OneDeviceStrategy('/cpu:0')
  config = train_lib.TrainConfig(model_dir='unused', model='cnn-cpu', lr=0.05,
                                 lr_schedule='constant', epochs=1, batch_size=64)
  _, method, _ = train_lib.build_method(config, splits, strategy)
  step = train_step.make_step_fn(method, strategy, False)
  batch = (tf.constant(splits.x_train, tf.float32) / 255.0, tf.constant(splits.y_train))
  batches = iter(tf.data.Dataset.from_tensors(batch).repeat())
  losses = []
  for _ in range(15):
    for m in method.metrics:
      m.reset_state()
    losses.append(float(step(batches)['loss']))
  assert losses[-1] < 0.5 * losses[0]


def _train_steps(strategy, make_network, batches, lr=0.1):
  with strategy.scope():
    network = make_network()
    method = methods.build('natural', network, 3, methods.MethodConfig())
    opt = optim.TorchSGD(lr, 0.9, False, 5e-4)
    method.compile(optimizer=opt)
    opt.build(network.trainable_variables)
  step = train_step.make_step_fn(method, strategy, False)
  ds = tf.data.Dataset.from_tensor_slices((tf.stack([b[0] for b in batches]),
                                           tf.stack([b[1] for b in batches])))
  if strategy.num_replicas_in_sync > 1:
    ds = strategy.experimental_distribute_dataset(ds)
  iterator = iter(ds)
  for _ in batches:
    step(iterator)
  return [v.numpy() for v in network.weights]


@pytest.mark.parametrize('kind', ['no_batchnorm', 'sync_batchnorm'])
def test_mirrored_strategy_equals_one_device(kind):
  rng = np.random.RandomState(0)
  batches = [(tf.constant(rng.rand(16, 8, 8, 3).astype(np.float32)),
              tf.constant(rng.randint(0, 3, 16).astype(np.int32))) for _ in range(4)]
  if kind == 'no_batchnorm':
    make = lambda: helpers.dense_network(seed=3)
  else:
    def make():
      keras.utils.set_random_seed(7)
      return models.build('cnn-cpu', (8, 8, 3), 3, sync_bn=True)
  one = _train_steps(tf.distribute.OneDeviceStrategy('/cpu:0'), make, batches)
  two = _train_steps(strategy_utils.mirrored_cpu(['/cpu:0', '/cpu:1']), make, batches)
  assert len(one) == len(two)
  for a, b in zip(one, two):
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_training_loop_runs_under_two_mirrored_replicas(tmp_path):
  # `--strategy=mirrored`: the loop reads per-replica logs outside strategy.scope(); it once
  # took them with tf.distribute.get_strategy() there and failed on the first step.
  config = _config(tmp_path, epochs=1, sync_bn=True)
  result = train_lib.train(config, strategy=strategy_utils.mirrored_cpu(['/cpu:0', '/cpu:1']))
  assert result['replicas'] == 2
  assert result['steps'] == 256 // 32
  assert 0.0 <= result['clean_accuracy'] <= 1.0


def _assert_same_weights(run_a, run_b):
  a, _ = run_dir.load_network(run_a)
  b, _ = run_dir.load_network(run_b)
  for va, vb in zip(a.weights, b.weights):
    np.testing.assert_allclose(va.numpy(), vb.numpy(), atol=1e-5)


def test_resume_continues_at_the_saved_step(tmp_path):
  strategy = tf.distribute.OneDeviceStrategy('/cpu:0')
  stopped = _config(tmp_path, max_steps=11, export=False)
  train_lib.train(stopped, strategy=strategy)
  ckpt_dir = os.path.join(stopped.model_dir, 'checkpoints')
  assert tf.train.latest_checkpoint(ckpt_dir).endswith('-11')
  full = _config(tmp_path, export=False)
  result = train_lib.train(full, strategy=strategy)
  assert result['steps'] == 2 * (256 // 32)
  # The same run without the interruption ends with the same weights.
  straight = _config(tmp_path, model_dir=str(tmp_path / 'straight'), export=False)
  train_lib.train(straight, strategy=strategy)
  _assert_same_weights(full.model_dir, straight.model_dir)


def test_checkpoint_of_another_model_is_refused(tmp_path):
  strategy = tf.distribute.OneDeviceStrategy('/cpu:0')
  train_lib.train(_config(tmp_path, max_steps=2, export=False), strategy=strategy)
  # Same model_dir, other model: flags.json says so before any restore is tried.
  with pytest.raises(UserError, match='model=cnn-cpu, not wrn-16-4'):
    train_lib.train(_config(tmp_path, model='wrn-16-4', export=False), strategy=strategy)
  # Without flags.json the checkpoint itself does not match.
  os.remove(os.path.join(str(tmp_path / 'run'), 'flags.json'))
  with pytest.raises(UserError, match='does not match'):
    train_lib.train(_config(tmp_path, model='wrn-16-4', export=False), strategy=strategy)


def test_init_from_starts_any_method_from_a_finished_run(tmp_path):
  strategy = tf.distribute.OneDeviceStrategy('/cpu:0')
  natural = _config(tmp_path, model_dir=str(tmp_path / 'natural'), max_steps=3, export=False,
                    eval_attack_steps=0)
  train_lib.train(natural, strategy=strategy)
  finished, _ = run_dir.load_network(natural.model_dir)
  splits = data.load('synthetic:8', None, 256, 64, 1)
  for method in ('at', 'trades'):
    config = _config(tmp_path, method=method, attack_steps=1, init_from=natural.model_dir)
    network, _, _ = train_lib.build_method(config, splits, strategy)
    for a, b in zip(network.weights, finished.weights):  # BN statistics and mean/std included.
      np.testing.assert_array_equal(a.numpy(), b.numpy())
  # Without --init_from the start is a fresh initialisation.
  network, _, _ = train_lib.build_method(_config(tmp_path, method='at'), splits, strategy)
  assert not np.array_equal(network.trainable_weights[0].numpy(),
                            finished.trainable_weights[0].numpy())
  # A resumed run restores its own checkpoint, not the --init_from weights: the interrupted and
  # resumed run ends where an uninterrupted one does.
  stopped = _config(tmp_path, method='at', attack_steps=1, init_from=natural.model_dir,
                    max_steps=5, export=False, eval_attack_steps=0)
  train_lib.train(stopped, strategy=strategy)
  resumed = dataclasses.replace(stopped, max_steps=9)
  train_lib.train(resumed, strategy=strategy)
  straight = dataclasses.replace(resumed, model_dir=str(tmp_path / 'straight'))
  train_lib.train(straight, strategy=strategy)
  _assert_same_weights(resumed.model_dir, straight.model_dir)


def test_init_from_must_be_a_run_of_the_same_network(tmp_path):
  strategy = tf.distribute.OneDeviceStrategy('/cpu:0')
  with pytest.raises(UserError, match='is not a finished training run'):
    train_lib.train(_config(tmp_path, init_from=str(tmp_path)), strategy=strategy)
  assert not os.path.exists(tmp_path / 'run')  # Refused before anything is written.
  natural = _config(tmp_path, model_dir=str(tmp_path / 'natural'), max_steps=1, export=False,
                    eval_attack_steps=0)
  train_lib.train(natural, strategy=strategy)
  splits = data.load('synthetic:8', None, 256, 64, 1)
  with pytest.raises(UserError, match='the --init_from run .* has model=cnn-cpu, but this run '
                     'needs wrn-16-4'):
    train_lib.build_method(_config(tmp_path, model='wrn-16-4', init_from=natural.model_dir),
                           splits, strategy)
  other = data.load('synthetic:16', None, 256, 64, 1)
  with pytest.raises(UserError, match=r'input_shape=\[8, 8, 3\], but this run needs \[16, 16, 3\]'):
    train_lib.build_method(_config(tmp_path, init_from=natural.model_dir), other, strategy)


def test_export_round_trip(tmp_path):
  strategy = tf.distribute.OneDeviceStrategy('/cpu:0')
  config = _config(tmp_path, max_steps=6)
  result = train_lib.train(config, strategy=strategy)
  export_dir = result['export_dir']
  assert os.path.isdir(export_dir)
  assert not [d for d in os.listdir(config.model_dir) if d.startswith('.export')]
  loaded = tf.saved_model.load(export_dir)
  serve = loaded.signatures['serving_default']
  network, spec = run_dir.load_network(config.model_dir)
  x = np.random.RandomState(0).rand(5, 8, 8, 3).astype(np.float32)
  out = serve(images=tf.constant(x))
  expected = network(x, training=False)['logits'].numpy()
  np.testing.assert_allclose(out['logits'].numpy(), expected, atol=1e-5)
  np.testing.assert_allclose(out['probabilities'].numpy().sum(1), 1.0, rtol=1e-5)
  assert spec['num_classes'] == 10
  with open(os.path.join(config.model_dir, 'result.json')) as f:
    assert json.load(f)['export_dir'] == export_dir


def test_nan_loss_stops_with_the_last_good_checkpoint(tmp_path, monkeypatch):
  from agkd_tf.methods import natural  # pylint: disable=g-import-not-at-top
  original = natural.Natural.compute_losses

  def poisoned(self, images, labels):
    terms, predictions = original(self, images, labels)
    # From the 7th step on (iterations counts finished steps), the loss is NaN.
    bad = tf.cast(self.optimizer.iterations >= 6, tf.float32)
    terms['loss'] = tf.where(bad > 0, tf.constant(float('nan')), terms['loss'])
    return terms, predictions

  monkeypatch.setattr(natural.Natural, 'compute_losses', poisoned)
  config = _config(tmp_path, export=False)
  with pytest.raises(UserError, match=r'non-finite at step 7.*ckpt-5'):
    train_lib.train(config, strategy=tf.distribute.OneDeviceStrategy('/cpu:0'))
  latest = tf.train.latest_checkpoint(os.path.join(config.model_dir, 'checkpoints'))
  assert latest.endswith('-5')
  assert not os.path.exists(os.path.join(config.model_dir, 'result.json'))


def test_madry_at_step_lowers_the_adversarial_loss():
  splits = data.load('synthetic:8', None, 64, 16, 0)
  strategy = tf.distribute.OneDeviceStrategy('/cpu:0')
  config = train_lib.TrainConfig(model_dir='unused', model='cnn-cpu', method='at', lr=0.05,
                                 lr_schedule='constant', epochs=1, batch_size=64, attack_steps=3)
  _, method, _ = train_lib.build_method(config, splits, strategy)
  x = tf.constant(splits.x_train, tf.float32) / 255.0
  y = tf.constant(splits.y_train)
  x_adv = method.adversarial(x, y)
  assert float(tf.reduce_max(tf.abs(x_adv - x))) <= 8 / 255 + 1e-6
  step = train_step.make_step_fn(method, strategy, False)
  batches = iter(tf.data.Dataset.from_tensors((x, y)).repeat())
  losses = []
  for _ in range(12):
    for m in method.metrics:
      m.reset_state()
    losses.append(float(step(batches)['loss']))
  assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3])


def test_in_training_accuracy_is_the_evaluators_pgd_column():
  rng = np.random.RandomState(0)
  x = rng.randint(0, 256, (12, 8, 8, 3)).astype(np.uint8)
  y = rng.randint(0, 3, 12)
  network = helpers.dense_network(num_classes=3, seed=2)
  model = runner_lib.network_model(network, 3)
  runner = runner_lib.AttackRunner(model, x, y, runner_lib.RunnerSettings(batch_size=8))
  first = runner_lib.network_accuracy(runner, attack_steps=2)
  assert runner_lib.network_accuracy(runner, attack_steps=2) == first  # Seeded starts.
  # The evaluator's own PGD over the same images and seeds counts the same images.
  (correct, _), dev = evaluation.AttackRunner(
      model, x, y, evaluation.EvalConfig(batch_size=8, verbose=0)).attack('pgd2')
  assert correct.mean() == first and dev <= 8 / 255 + 1e-6
  clean = runner_lib.network_accuracy(runner)
  logits = network(tf.constant(x, tf.float32) / 255.0, training=False)['logits']
  assert clean == float(np.mean(np.argmax(logits.numpy(), -1) == y))
