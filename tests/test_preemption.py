"""Never losing a run: skip or stop on a non-finite loss, damaged checkpoints, and `kill -9`.

- `--nan_policy=skip_batch`: a step with a non-finite loss leaves weights, BatchNorm statistics,
  momentum and the epoch means exactly as they were (one device and two mirrored replicas, with a
  NaN loss whose gradients are finite and with NaN inputs whose gradients are not); only the step
  counter moves. `stop` is tested in test_train.py
  (test_nan_loss_stops_with_the_last_good_checkpoint) and here across replicas.
- A latest checkpoint that does not restore falls back to the one before it.
- SIGTERM or Ctrl-C: the step in flight finishes, a checkpoint is saved, the binary prints one line
  and exits with 128 + the signal, and the rerun resumes from that step.
- `--deterministic` training killed with SIGKILL at three random points and rerun each time ends
  with the weights of an uninterrupted run, bit for bit (CPU).
"""

import dataclasses
import glob
import os
import random
import re
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from agkd_tf import data
from agkd_tf.core import errors
from agkd_tf import strategy_utils
from agkd_tf import train_lib
from agkd_tf import train_step
from agkd_tf.core.errors import UserError
from agkd_tf.methods import natural
from tests import conftest


def _poison(monkeypatch, kind, steps, replica=None):
  """Makes natural training's loss non-finite at the given optimiser steps.

  kind 'loss': the loss is replaced by NaN, so the gradients stay finite (zero) and only the loss
  tells; kind 'input': the images are NaN, so the gradients and BatchNorm's batch statistics are
  NaN too. `replica`: poison that replica only.
  """
  original = natural.Natural.compute_losses

  def poisoned(self, images, labels):
    iteration = tf.cast(self.optimizer.iterations, tf.int32)
    bad = tf.reduce_any(tf.equal(iteration, tf.constant(list(steps), tf.int32)))
    if replica is not None:
      replica_id = tf.distribute.get_replica_context().replica_id_in_sync_group
      bad = tf.logical_and(bad, tf.equal(tf.cast(replica_id, tf.int32), replica))
    if kind == 'input':
      images = tf.where(bad, tf.fill(tf.shape(images), float('nan')), images)
    terms, predictions = original(self, images, labels)
    if kind == 'loss':
      terms['loss'] = tf.where(bad, tf.constant(float('nan')), terms['loss'])
    return terms, predictions

  monkeypatch.setattr(natural.Natural, 'compute_losses', poisoned)


def _strategy(replicas):
  if replicas == 1:
    return tf.distribute.OneDeviceStrategy('/cpu:0')
  return strategy_utils.mirrored_cpu(['/cpu:0', '/cpu:1'])


def _built(strategy):
  splits = data.load('synthetic:8', None, 64, 16, 0)
  config = train_lib.TrainConfig(model_dir='unused', model='cnn-cpu', lr=0.05,
                                 lr_schedule='constant', epochs=1, batch_size=32)
  network, method, optimizer = train_lib.build_method(config, splits, strategy)
  batch = (tf.constant(splits.x_train[:32], tf.float32) / 255.0,
           tf.constant(splits.y_train[:32]))
  ds = tf.data.Dataset.from_tensors(batch).repeat()
  if strategy.num_replicas_in_sync > 1:
    ds = strategy.experimental_distribute_dataset(ds)
  return network, method, optimizer, iter(ds)


def _state(network, method, optimizer):
  """Every value a step may change, per replica for distributed variables."""
  def values(v):
    v = v.value if hasattr(v, 'value') else v
    return [x.numpy() for x in tf.distribute.get_strategy().experimental_local_results(v)]
  out = {}
  for v in network.weights:
    out[v.path] = values(v)
  for i, v in enumerate(optimizer.momentums):
    out[f'momentum/{i}'] = values(v)
  for m in method.metrics:
    for v in m.variables:
      out[f'tracker/{v.path}'] = [np.array(v.numpy())]
  return out


@pytest.mark.parametrize('replicas', [1, 2])
@pytest.mark.parametrize('kind', ['loss', 'input'])
def test_skip_batch_step_changes_nothing_but_the_step_counter(monkeypatch, kind, replicas):
  # Two replicas: only replica 0 sees the bad batch, and both must still skip.
  _poison(monkeypatch, kind, steps=[1], replica=0 if replicas > 1 else None)
  strategy = _strategy(replicas)
  network, method, optimizer, iterator = _built(strategy)
  with strategy.scope():
    step = train_step.make_step_fn(method, strategy, False, 'skip_batch')
    first = lambda x: strategy.experimental_local_results(x)[0]
    _, _, bad = step(iterator)
    assert not bool(first(bad))
    before = _state(network, method, optimizer)
    logs, step_logs, bad = step(iterator)
    assert bool(first(bad))
    for r in range(replicas):
      assert bool(strategy.experimental_local_results(bad)[r])
    assert not np.isfinite(float(first(step_logs)['loss']))
    assert np.isfinite(float(first(logs)['loss']))
    after = _state(network, method, optimizer)
    assert int(optimizer.iterations.numpy()) == 2  # The batch counts as consumed.
    assert before.keys() == after.keys()
    for name in before:
      for a, b in zip(before[name], after[name]):
        assert np.array_equal(a, b), name  # Bit for bit, BatchNorm statistics included.
    _, _, bad = step(iterator)
    assert not bool(first(bad))
    moved = _state(network, method, optimizer)
  assert any(not np.array_equal(a[0], b[0]) for a, b in zip(after.values(), moved.values()))
  for values in moved.values():
    assert all(np.isfinite(v).all() for v in values)


def test_stop_policy_agrees_across_replicas(monkeypatch):
  _poison(monkeypatch, 'loss', steps=[1], replica=1)
  strategy = _strategy(2)
  _, method, _, iterator = _built(strategy)
  step = train_step.make_step_fn(method, strategy, False, 'stop')
  assert not any(strategy.experimental_local_results(step(iterator)[2]))
  # Replica 0's own loss is finite; it must stop all the same.
  logs, _, bad = step(iterator)
  assert np.isfinite(float(strategy.experimental_local_results(logs['loss'])[0]))
  assert all(strategy.experimental_local_results(bad))


def _config(tmp_path, **overrides):
  values = dict(model_dir=str(tmp_path / 'run'), dataset='synthetic:8', train_examples=128,
                test_examples=20, model='cnn-cpu', epochs=2, batch_size=32, lr=0.05,
                lr_schedule='constant', eval_examples=10, eval_attack_steps=0,
                checkpoint_every_steps=1, keep_checkpoints=3, log_every_steps=0, verbose=0,
                seed=3, export=False)
  values.update(overrides)
  return train_lib.TrainConfig(**values)


def test_skip_batch_run_counts_skips_and_finishes(tmp_path, monkeypatch):
  _poison(monkeypatch, 'input', steps=[2, 5])
  config = _config(tmp_path, nan_policy='skip_batch')
  result = train_lib.train(config, strategy=tf.distribute.OneDeviceStrategy('/cpu:0'))
  assert result['steps'] == 8 and result['skipped_steps'] == 2
  reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(
      os.path.join(config.model_dir, 'checkpoints')))
  for name in reader.get_variable_to_shape_map():
    value = reader.get_tensor(name)
    if isinstance(value, np.ndarray) and value.dtype.kind == 'f':
      assert np.isfinite(value).all(), name


def _checkpoint_names(model_dir):
  reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(
      os.path.join(model_dir, 'checkpoints')))
  return set(reader.get_variable_to_shape_map())


def test_the_guard_leaves_the_checkpoint_as_it_is(tmp_path):
  # The guard wraps the optimiser but is no checkpoint dependency: the checkpoint of a
  # skip_batch run holds the same variables as a plain one, and a run stopped on a NaN under
  # the default policy resumes with --nan_policy=skip_batch.
  strategy = tf.distribute.OneDeviceStrategy('/cpu:0')
  plain = _config(tmp_path / 'plain', max_steps=2)
  guarded = _config(tmp_path / 'guarded', max_steps=2, nan_policy='skip_batch')
  train_lib.train(plain, strategy=strategy)
  train_lib.train(guarded, strategy=strategy)
  names = _checkpoint_names(plain.model_dir)
  assert names == _checkpoint_names(guarded.model_dir)
  assert not [n for n in names if 'guard' in n]
  result = train_lib.train(dataclasses.replace(plain, max_steps=4, nan_policy='skip_batch'),
                           strategy=strategy)
  assert result['steps'] == 4 and _checkpoint_names(plain.model_dir) == names
  _, method, optimizer, _ = _built(strategy)
  guard = train_step.NonFiniteGuard.install(method)
  assert method.optimizer is guard and train_step.NonFiniteGuard.install(method) is guard
  assert guard.inner_optimizer is optimizer and guard.iterations is optimizer.iterations
  with pytest.raises(ValueError, match='does not wrap a LossScaleOptimizer'):
    train_step.NonFiniteGuard(keras.optimizers.LossScaleOptimizer(optimizer))


def test_a_damaged_latest_checkpoint_falls_back_to_the_previous(tmp_path, caplog):
  strategy = tf.distribute.OneDeviceStrategy('/cpu:0')
  train_lib.train(_config(tmp_path, max_steps=5), strategy=strategy)
  ckpt_dir = os.path.join(str(tmp_path / 'run'), 'checkpoints')
  assert tf.train.latest_checkpoint(ckpt_dir).endswith('-5')
  data_file, = glob.glob(os.path.join(ckpt_dir, 'ckpt-5.data-*'))
  with open(data_file, 'r+b') as f:  # A disk that lost the tail of the file.
    f.truncate(os.path.getsize(data_file) // 2)
  os.makedirs(os.path.join(ckpt_dir, 'ckpt-6_temp'))  # What a save killed midway leaves.
  result = train_lib.train(_config(tmp_path), strategy=strategy)
  assert result['steps'] == 8
  assert 'Resuming from' in caplog.text and 'ckpt-4' in caplog.text
  assert not os.path.exists(os.path.join(ckpt_dir, 'ckpt-6_temp'))
  # Every checkpoint damaged: a clear error, not a traceback.
  for path in glob.glob(os.path.join(ckpt_dir, 'ckpt-*.data-*')):
    with open(path, 'r+b') as f:
      f.truncate(8)
  with pytest.raises(UserError, match='damaged'):
    train_lib.train(_config(tmp_path, epochs=3), strategy=strategy)


# A tiny deterministic Madry-AT run: attack random starts, augmentation and data order all come
# from the seed. 128 images / 16 = 8 steps per epoch, 2 epochs, a checkpoint after every step.
_KILL_RUN = ['--dataset=synthetic:8', '--train_examples=128', '--test_examples=20',
             '--model=cnn-cpu', '--method=at', '--attack_steps=1', '--epochs=2', '--batch_size=16',
             '--lr=0.05', '--lr_schedule=constant', '--checkpoint_every_steps=1',
             '--keep_checkpoints=2', '--eval_attack_steps=0', '--eval_examples=10',
             '--log_every_steps=0', '--verbose=0', '--export=false', '--deterministic', '--seed=5']
_KILL_TOTAL_STEPS = 16


def _train_process(model_dir):
  env = dict(os.environ)
  env.pop('AGKD_TF_VERBOSE_IMPORT', None)
  return subprocess.Popen([sys.executable, '-m', 'agkd_tf.train', f'--model_dir={model_dir}',
                           *_KILL_RUN], cwd=conftest.REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def _latest_step(model_dir):
  path = tf.train.latest_checkpoint(os.path.join(model_dir, 'checkpoints'))
  return int(re.search(r'-(\d+)$', path).group(1)) if path else 0


def _checkpoint_values(model_dir):
  reader = tf.train.load_checkpoint(os.path.join(model_dir, 'checkpoints'))
  names = [n for n in reader.get_variable_to_shape_map()
           if not n.startswith(('save_counter', '_CHECKPOINTABLE_OBJECT_GRAPH'))]
  return {n: reader.get_tensor(n) for n in names}


def test_kill_9_at_three_random_points_then_rerun_gives_the_same_weights(tmp_path):
  seed = int(os.environ.get('AGKD_KILL_SEED', time.time_ns() % 100000))
  rng = random.Random(seed)
  targets = sorted(rng.sample(range(1, _KILL_TOTAL_STEPS - 2), 3))
  delays = [rng.uniform(0.0, 0.08) for _ in targets]
  straight_dir, killed_dir = str(tmp_path / 'straight'), str(tmp_path / 'killed')
  straight = _train_process(straight_dir)  # Runs alongside the killed one.
  deadline = time.time() + 300
  log = [f'seed {seed}']
  for target, delay in zip(targets, delays):
    proc = _train_process(killed_dir)
    while proc.poll() is None and _latest_step(killed_dir) < target:
      assert time.time() < deadline, log
      time.sleep(0.005)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    out, _ = proc.communicate()
    leftovers = glob.glob(os.path.join(killed_dir, 'checkpoints', '*_temp'))
    log.append(f'killed (rc {proc.returncode}) {delay * 1000:.0f} ms after checkpoint '
               f'{_latest_step(killed_dir)} >= {target}'
               + (', mid-save' if leftovers else ''))
    assert proc.returncode in (-signal.SIGKILL, 0), out[-2000:]
  for _ in range(3):  # Rerun the same command until it finishes.
    proc = _train_process(killed_dir)
    out, _ = proc.communicate(timeout=max(1, deadline - time.time()))
    if proc.returncode == 0:
      break
  assert proc.returncode == 0, (log, out[-3000:])
  out, _ = straight.communicate(timeout=max(1, deadline - time.time()))
  assert straight.returncode == 0, out[-3000:]
  assert _latest_step(killed_dir) == _latest_step(straight_dir) == _KILL_TOTAL_STEPS
  a, b = _checkpoint_values(killed_dir), _checkpoint_values(straight_dir)
  assert a.keys() == b.keys() and len(a) > 10
  different = [n for n in a if not np.array_equal(a[n], b[n])]
  assert not different, (log, different)
  print('; '.join(log))


def _signal_after(monkeypatch, signum, after_steps):
  """Sends `signum` to this process once the loop has run `after_steps` steps."""
  original = train_step.make_step_fn
  calls = [0]

  def make_step_fn(*args, **kwargs):
    step_fn = original(*args, **kwargs)

    def counted(iterator):
      out = step_fn(iterator)
      calls[0] += 1
      if calls[0] == after_steps:
        os.kill(os.getpid(), signum)
      return out

    return counted

  monkeypatch.setattr(train_step, 'make_step_fn', make_step_fn)


@pytest.mark.parametrize('signum', [signal.SIGTERM, signal.SIGINT])
def test_a_signal_saves_after_the_current_step_and_the_rerun_finishes(tmp_path, monkeypatch,
                                                                      signum):
  # No periodic checkpoints: the only one before the end of epoch 1 (step 4) is the signal's.
  strategy = tf.distribute.OneDeviceStrategy('/cpu:0')
  config = _config(tmp_path, checkpoint_every_steps=0)
  before = signal.getsignal(signum)
  _signal_after(monkeypatch, signum, 3)
  with pytest.raises(errors.Stopped, match=f'{signal.Signals(signum).name} at step 3 of 8') as e:
    train_lib.train(config, strategy=strategy)
  assert e.value.signum == signum
  assert signal.getsignal(signum) is before  # The handler is gone with the loop.
  ckpt_dir = os.path.join(config.model_dir, 'checkpoints')
  assert tf.train.latest_checkpoint(ckpt_dir).endswith('-3')
  assert not os.path.exists(os.path.join(config.model_dir, 'result.json'))
  monkeypatch.undo()
  result = train_lib.train(config, strategy=strategy)
  assert result['start_step'] == 3 and result['steps'] == 8


def test_the_binary_stopped_by_sigterm_prints_one_line_and_exits_143(tmp_path):
  model_dir = str(tmp_path / 'run')
  env = dict(os.environ)
  env.pop('AGKD_TF_VERBOSE_IMPORT', None)
  run = [a for a in _KILL_RUN if not a.startswith(('--epochs', '--verbose', '--checkpoint_every'))]
  proc = subprocess.Popen([sys.executable, '-m', 'agkd_tf.train', f'--model_dir={model_dir}',
                           *run, '--epochs=100', '--verbose=2', '--checkpoint_every_steps=0'],
                          cwd=conftest.REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  # Epoch 1's line: the loop (and its handler) is running, with 99 epochs still to go.
  for line in proc.stdout:
    if line.startswith('epoch 1/100'):
      break
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
  lines = err.strip().splitlines()
  assert lines[-1].startswith('stopped: SIGTERM at step '), err[-2000:]
  assert 'Traceback' not in err
  step = int(re.search(r'at step (\d+) of 800', lines[-1]).group(1))
  assert 8 <= step < 800 and _latest_step(model_dir) == step
