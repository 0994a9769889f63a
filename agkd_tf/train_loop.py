"""The epochs of a training run: steps, checkpoints, summaries and the final evaluation.

`train_lib.train` builds the run and hands it to a `Loop`, which trains epoch by epoch from the
restored step. Resume is exact: the data order and augmentation of every epoch are functions of
(seed, epoch), so a run restored at global step k rebuilds its epoch and skips the batches already
trained. A checkpoint is saved every `checkpoint_every_steps` and at every epoch end, counted with a
plain step number so that every worker of a multi-worker run decides alike.

A single-worker run asked to stop (SIGTERM from a scheduler or `bench/recipe_study.py
--max_minutes`, Ctrl-C) finishes its current step, saves a checkpoint and raises `errors.Stopped`,
so no more than one step is lost however far apart the periodic checkpoints are. A multi-worker
run keeps the default action: its workers would see the signal at different steps, and a worker
that stops to save while the others enter the next step's all-reduce would hang them all.
"""

import contextlib
import signal
import sys
import threading
import time

from absl import logging
import keras
import tensorflow as tf

from agkd_tf import data as data_lib
from agkd_tf import strategy_utils
from agkd_tf import train_step
from agkd_tf.core import errors
from agkd_tf.data import pipeline
from agkd_tf.evaluation import runner as runner_lib
from agkd_tf.core.errors import UserError

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Loop:
  """The epochs of one run: state shared by its steps, its epochs and its end."""

  def __init__(self, config, splits, strategy, network, method, optimizer, checkpoints,
               summaries, start_step, restored):
    self.config, self.splits, self.strategy = config, splits, strategy
    self.network, self.method, self.optimizer = network, method, optimizer
    self.checkpoints, self.summaries = checkpoints, summaries
    self.start_step = self.step = start_step
    self.saved_step = start_step if restored else None
    self.steps_per_epoch = pipeline.steps_per_epoch(len(splits.y_train), config.batch_size)
    self.total_steps = self.steps_per_epoch * config.epochs
    if config.max_steps:
      self.total_steps = min(self.total_steps, config.max_steps)
    self.jit = strategy_utils.resolve_jit(config.jit_compile)
    self.step_fn = train_step.make_step_fn(method, strategy, self.jit, config.nan_policy)
    self.train_seconds, self.timed_images, self.skipped = 0.0, 0, 0
    self.logs = {}
    self.stop_signal = None  # Set by the handler of `stop_on_signals`.
    # Held-out subset for periodic evaluation: class-balanced, fixed by the seed.
    idx = data_lib.balanced_indices(splits.y_test, config.eval_examples, splits.num_classes,
                                    config.seed + 2)
    self.x_eval, self.y_eval = splits.x_test[idx], splits.y_test[idx]
    # The evaluator's runner, with its integrity checks: the same compiled PGD and seeds as the
    # PGD column of `python -m agkd_tf.evaluate`, kept for the run so it compiles once.
    self._eval_model = runner_lib.network_model(network, splits.num_classes)
    self._eval_settings = runner_lib.RunnerSettings(batch_size=config.eval_batch_size,
                                                    eps=config.eps, seed=config.seed)
    self.eval_runner = runner_lib.AttackRunner(self._eval_model, self.x_eval, self.y_eval,
                                               self._eval_settings)

  def pgd_accuracy(self):
    return runner_lib.network_accuracy(self.eval_runner, self.config.eval_attack_steps,
                                       self.config.step_size)

  def held_out_eval(self):
    values = {'clean': runner_lib.network_accuracy(self.eval_runner)}
    if self.config.eval_attack_steps:
      values[f'pgd{self.config.eval_attack_steps}'] = self.pgd_accuracy()
    self.summaries.eval_accuracies(values, self.step)
    return values

  def _epoch_dataset(self, epoch, skip, epoch_steps):
    c = self.config
    ds = pipeline.train_dataset(self.splits.x_train, self.splits.y_train, c.batch_size, epoch,
                                c.seed, skip_batches=skip, augment=c.augment,
                                flip=self.splits.flip, with_index=self.method.needs_indices)
    return train_step.distribute(ds.take(epoch_steps - skip), self.strategy, c.batch_size)

  def _check_finite(self, nonfinite, step_out):
    """Stops the run, or counts a skipped batch, when the step's loss was not finite."""
    if not bool(self.strategy.experimental_local_results(nonfinite)[0]):
      return
    step_logs = train_step.first_replica(step_out, self.strategy)
    terms = train_step.describe_bad_terms({k: float(v) for k, v in step_logs.items()},
                                          self.method.loss_terms)
    if self.config.nan_policy == 'stop':
      raise UserError(
          f'the loss became non-finite at step {self.step} (term: {terms}); stopping without '
          f'saving. Last good checkpoint: {self.checkpoints.latest() or "none"}.')
    self.skipped += 1
    logging.warning('Step %d: the loss is not finite (term: %s); the batch was skipped and '
                    'the weights kept (%d skipped so far).', self.step, terms, self.skipped)
    self.summaries.train_scalars({'train/skipped_batch': 1.0}, self.step)

  def _save(self):
    self.checkpoints.save(self.step)
    self.saved_step = self.step

  def _stop(self):
    if self.saved_step != self.step:
      self._save()
    self.checkpoints.close()
    name = signal.Signals(self.stop_signal).name
    raise errors.Stopped(
        f'{name} at step {self.step} of {self.total_steps}; checkpoint saved in '
        f'{self.checkpoints.directory}; rerun the same command to resume', self.stop_signal)

  def run_epoch(self):
    """Trains from the current step to the end of its epoch (or total_steps)."""
    c = self.config
    epoch = self.step // self.steps_per_epoch
    skip = self.step % self.steps_per_epoch
    epoch_steps = min(self.steps_per_epoch, self.total_steps - epoch * self.steps_per_epoch)
    iterator = iter(self._epoch_dataset(epoch, skip, epoch_steps))
    for m in self.method.metrics:
      m.reset_state()
    bar = keras.utils.Progbar(epoch_steps, stateful_metrics=[m.name for m in self.method.metrics],
                              verbose=1 if c.verbose == 1 else 0,
                              interval=0.5 if sys.stdout.isatty() else 60.0)
    if c.verbose == 1:
      print(f'Epoch {epoch + 1}/{c.epochs}', flush=True)
    epoch_start = window_start = time.time()
    epoch_images = window_images = 0
    for _ in range(epoch_steps - skip):
      t0 = time.time()
      out, step_out, nonfinite = self.step_fn(iterator)
      self.logs = {k: float(v) for k, v in train_step.first_replica(out, self.strategy).items()}
      self.step += 1
      self._check_finite(nonfinite, step_out)
      if self.step > self.start_step + 1:  # The first step includes tracing: not throughput.
        self.train_seconds += time.time() - t0
        self.timed_images += c.batch_size
      epoch_images += c.batch_size
      window_images += c.batch_size
      bar.update(self.step - epoch * self.steps_per_epoch, list(self.logs.items()))
      if c.log_every_steps and self.step % c.log_every_steps == 0:
        now = time.time()
        self.summaries.train_scalars(
            {**{f'train/{k}': v for k, v in self.logs.items()},
             'train/lr': float(self.optimizer.learning_rate),
             'train/images_per_sec': window_images / max(now - window_start, 1e-9)}, self.step)
        window_start, window_images = now, 0
      if c.checkpoint_every_steps and self.step % c.checkpoint_every_steps == 0:
        self._save()
      if self.stop_signal is not None:
        self._stop()
      if self.step >= self.total_steps:
        break
    # A plain counter rather than the manager's state: all workers must decide alike, and a
    # non-chief worker's manager forgets its removed checkpoints.
    if self.saved_step != self.step:
      self._save()
    self._end_of_epoch(epoch, epoch_images, time.time() - epoch_start)

  def _end_of_epoch(self, epoch, epoch_images, epoch_time):
    c = self.config
    summary = {f'epoch/{k}': v for k, v in self.logs.items()}
    summary['epoch/images_per_sec'] = epoch_images / max(epoch_time, 1e-9)
    summary['epoch/seconds'] = epoch_time
    if c.nan_policy == 'skip_batch':
      summary['epoch/skipped_batches'] = self.skipped
    self.summaries.train_scalars(summary, self.step)
    self.summaries.attention(self.method, pipeline.to_float(tf.constant(self.x_eval[:8])),
                             tf.constant(self.y_eval[:8], tf.int32), self.step)
    line = ' '.join(f'{k}={v:.4f}' for k, v in self.logs.items())
    message = (f'epoch {epoch + 1}/{c.epochs} step {self.step}: {line} '
               f'lr={float(self.optimizer.learning_rate):.5f} '
               f'{summary["epoch/images_per_sec"]:.1f} images/sec {epoch_time:.1f}s')
    if self.skipped:
      message += f' skipped={self.skipped}'
    if (self.checkpoints.chief and c.eval_every and (epoch + 1) % c.eval_every == 0 and
        self.step < self.total_steps):
      values = self.held_out_eval()
      message += ' | eval ' + ' '.join(f'{k}={v:.4f}' for k, v in values.items())
    if c.verbose:
      print(message, flush=True)
    else:
      logging.info('%s', message)

  def result(self):
    """The final evaluation (clean on the whole test split, PGD on the held-out subset)."""
    c, splits = self.config, self.splits
    test_runner = runner_lib.AttackRunner(self._eval_model, splits.x_test, splits.y_test,
                                          self._eval_settings)
    clean = runner_lib.network_accuracy(test_runner)
    result = {
        'dataset': c.dataset, 'model': c.model, 'method': c.method, 'epochs': c.epochs,
        'steps': self.step, 'train_examples': int(len(splits.y_train)),
        'test_examples': int(len(splits.y_test)), 'clean_accuracy': clean,
        'images_per_sec': self.timed_images / self.train_seconds if self.train_seconds else None,
        'replicas': self.strategy.num_replicas_in_sync, 'jit_compile': self.jit,
        'deterministic': c.deterministic,
    }
    if c.nan_policy == 'skip_batch':
      result['skipped_steps'] = self.skipped  # In this invocation; TensorBoard has every one.
    accuracies = {'clean': clean}
    if c.eval_attack_steps:
      key = f'pgd{c.eval_attack_steps}_accuracy'
      result[key] = accuracies[f'pgd{c.eval_attack_steps}'] = self.pgd_accuracy()
      result['attack_examples'] = int(len(self.y_eval))
      result['eps'] = c.eps
    self.summaries.eval_accuracies(accuracies, self.step)
    return result


@contextlib.contextmanager
def stop_on_signals(loop, enabled=True):
  """While the loop runs, SIGTERM and SIGINT ask it to save and stop after the current step.

  The first signal only sets `loop.stop_signal` (a step runs in TensorFlow, which a Python handler
  cannot interrupt); the previous handlers come back at once, so a second signal acts as before.
  Without `enabled` (multi-worker runs), or off the main thread, where Python allows no handlers,
  the signals keep their default action.
  """
  if not enabled or threading.current_thread() is not threading.main_thread():
    yield
    return
  previous = {}

  def restore():
    for signum, handler in previous.items():
      signal.signal(signum, handler)
    previous.clear()

  def on_signal(signum, frame):
    del frame
    loop.stop_signal = signum
    logging.warning('%s received: stopping after this step, with a checkpoint.',
                    signal.Signals(signum).name)
    restore()

  for signum in _STOP_SIGNALS:
    previous[signum] = signal.signal(signum, on_signal)
  try:
    yield
  finally:
    restore()
