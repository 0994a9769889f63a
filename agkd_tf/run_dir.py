"""The run directory: its files, its checkpoints, and the network of a finished run.

A training run (`train_lib.train`) owns one directory, `model_dir`:

  checkpoints/      tf.train.Checkpoint of network, optimiser and method state, every
                    `checkpoint_every_steps` steps and at every epoch end; the last
                    `keep_checkpoints` are kept. A rerun of the same command resumes from the latest
                    that restores (an unreadable latest one falls back to the one before).
  summaries/        TensorBoard (`agkd_tf.summaries` owns the writers and the tags).
  flags.json        the resolved configuration.
  model_spec.json   what is needed to rebuild the network (model, input shape, classes, data).
  result.json       final metrics, written atomically at the end.
  export/           SavedModel (written to a temporary name, then renamed; `export_lib`).

This module is the one place that reads and writes those files and checkpoints: the trainer, the
evaluator, the exporter and the teacher / `--init_from` loaders all go through it.

Checkpoints are atomic as TensorFlow writes them: shards go to a temporary name, are merged and
renamed, and only then does the `checkpoint` state file (itself written to a temporary file and
renamed) point at them, so a kill mid-save leaves the previous checkpoint as the latest. Leftover
temporary files are removed at start, and a latest checkpoint that still fails to restore (a disk
that lied) makes the run fall back to the previous one rather than fail.

Multi-worker: every worker takes part in each checkpoint save (the save all-reduces on-read
variables), but only the chief keeps its copy; the others write beside it into a temporary
directory they remove after each save (`write_dir`).
"""

import dataclasses
import glob
import os
import shutil
import time

from absl import logging
import tensorflow as tf

from agkd_tf import io_utils
from agkd_tf import models
from agkd_tf import strategy_utils
from agkd_tf.core.errors import UserError


def check_existing_run(model_dir, config):
  """Refuses to resume a run directory that belongs to a different model or dataset."""
  path = os.path.join(model_dir, 'flags.json')
  if not os.path.exists(path):
    return
  old = io_utils.read_json(path)
  for key in ('model', 'dataset', 'method'):
    if key in old and old[key] != getattr(config, key):
      raise UserError(
          f'{model_dir} holds a run with {key}={old[key]}, not {getattr(config, key)}; its '
          'checkpoints cannot be resumed with these flags. Use a new --model_dir.')


def model_spec(config, splits):
  """What evaluation and export need to rebuild the network and find its data."""
  kind, _, path = config.dataset.partition(':')
  # Absolute, so `evaluate` finds the data from any working directory.
  dataset = f'{kind}:{os.path.abspath(path)}' if kind in ('folder', 'npz') else config.dataset
  return {'model': config.model, 'input_shape': list(splits.image_shape),
          'num_classes': int(splits.num_classes), 'class_names': list(splits.class_names),
          'dataset': dataset}


def write_run_files(model_dir, config, splits):
  """Writes flags.json and model_spec.json (atomically; the chief only)."""
  io_utils.write_json_atomic(os.path.join(model_dir, 'flags.json'), dataclasses.asdict(config))
  io_utils.write_json_atomic(os.path.join(model_dir, 'model_spec.json'), model_spec(config, splits))


def result_path(model_dir):
  return os.path.join(model_dir, 'result.json')


def read_result(model_dir):
  return io_utils.read_json(result_path(model_dir))


def write_result(model_dir, result):
  io_utils.write_json_atomic(result_path(model_dir), result)


def load_network(model_dir, checkpoint=None):
  """Rebuilds a run's network and restores its weights.

  Args:
    model_dir: a run directory written by `train_lib.train`.
    checkpoint: a checkpoint prefix; the latest in `model_dir/checkpoints` by default.

  Returns:
    (network, spec): the restored float32 network and the run's model_spec dict.

  Raises:
    UserError: not a run directory, no checkpoint, or a checkpoint of another model.
  """
  spec_path = os.path.join(model_dir, 'model_spec.json')
  if not os.path.isfile(spec_path):
    raise UserError(f'{model_dir} is not a training run directory (no model_spec.json)')
  spec = io_utils.read_json(spec_path)
  checkpoint = checkpoint or tf.train.latest_checkpoint(os.path.join(model_dir, 'checkpoints'))
  if not checkpoint:
    raise UserError(f'{model_dir}/checkpoints holds no checkpoint to export')
  network = models.build(spec['model'], spec['input_shape'], spec['num_classes'])
  try:
    status = tf.train.Checkpoint(network=network).restore(checkpoint)
    status.expect_partial().assert_existing_objects_matched()
  except (AssertionError, ValueError, tf.errors.InvalidArgumentError,
          tf.errors.NotFoundError) as e:
    raise UserError(f'{checkpoint} does not hold a {spec["model"]} network '
                    f'({type(e).__name__})') from None
  return network, spec


def load_matching_network(directory, config, splits, role):
  """The network of the finished run `directory`, checked against this run's model and data.

  Args:
    directory: a run directory with a checkpoint.
    config: this run's TrainConfig.
    splits: this run's data.
    role: how errors name the run ('the teacher in', 'the --init_from run').

  Returns:
    The restored float32 network.

  Raises:
    UserError: not a run, no checkpoint, or another model, input shape or number of classes.
  """
  network, spec = load_network(directory)
  check_matching_spec(spec, directory, config, splits, role)
  return network


def check_matching_spec(spec, directory, config, splits, role):
  """Raises UserError unless the run's model_spec `spec` has this run's network and data shape."""
  want = {'model': config.model, 'input_shape': list(splits.image_shape),
          'num_classes': int(splits.num_classes)}
  for key, value in want.items():
    if spec.get(key) != value:
      raise UserError(f'{role} {directory} has {key}={spec.get(key)}, but this run '
                      f'needs {value}')


# A checkpoint whose files are damaged (truncated, missing a shard) rather than of another model.
# The checkpoint reader reports a truncated file as an IndexError.
_UNREADABLE = (IndexError, tf.errors.DataLossError, tf.errors.OutOfRangeError,
               tf.errors.NotFoundError, tf.errors.UnknownError)


def _first_line(error):
  text = str(error).strip()
  return text.splitlines()[0][:200] if text else type(error).__name__


def restore(checkpoint, checkpoint_dir, model_dir):
  """Restores the newest checkpoint of `checkpoint_dir` that restores; returns its path or None.

  A checkpoint that fails to restore is skipped for the one before it: TensorFlow's writes are
  atomic, but a filesystem can still lose the tail of a file, and a run should lose a few steps
  rather than everything. When none restores, the error says whether the files are damaged or
  were written by a different model.
  """
  state = tf.train.get_checkpoint_state(checkpoint_dir)
  if not state or not state.model_checkpoint_path:
    return None
  candidates = [state.model_checkpoint_path]
  candidates += [p for p in reversed(state.all_model_checkpoint_paths) if p not in candidates]
  errors = []
  for path in candidates:
    try:
      status = checkpoint.restore(path)
      status.assert_existing_objects_matched()
    except (AssertionError, ValueError, IndexError, tf.errors.OpError) as e:
      errors.append((path, e))
      logging.warning('Checkpoint %s does not restore (%s).', path, _first_line(e))
      continue
    if errors:
      logging.warning('Resuming from %s, the newest checkpoint that restores.', path)
    return path
  latest, error = errors[0]
  if all(isinstance(e, _UNREADABLE) for _, e in errors):
    raise UserError(f'no checkpoint in {checkpoint_dir} can be read ({_first_line(error)}); the '
                    f'files are damaged. Move them away to start {model_dir} afresh.')
  raise UserError(f'the checkpoint {latest} does not match this model and method '
                  f'({_first_line(error)}). It was written by a different configuration; use a '
                  f'new --model_dir than {model_dir}.')


def remove_save_leftovers(checkpoint_dir):
  """Removes what a save killed midway leaves: TF's `<prefix>_temp` shard directories and the
  temporary files of the `checkpoint` state file. Neither is ever read; both are harmless, but
  they would accumulate over preemptions."""
  for path in glob.glob(os.path.join(checkpoint_dir, '*_temp')) + glob.glob(
      os.path.join(checkpoint_dir, 'checkpoint.tmp*')):
    if os.path.isdir(path):
      shutil.rmtree(path, ignore_errors=True)
    else:
      try:
        os.remove(path)
      except OSError:
        pass


def write_dir(directory, strategy):
  """Where this process writes what belongs in `directory` (checkpoints).

  Every worker of a MultiWorkerMirroredStrategy must take part in a save (the save all-reduces
  the on-read variables), but only the chief's copy is kept: other workers write into a
  temporary directory beside it, which they remove after each save (TensorFlow's
  `write_checkpoint_dir` pattern).
  """
  if strategy_utils.is_chief(strategy):
    return directory
  task_type, task_id = strategy_utils.task(strategy)
  return os.path.join(os.path.dirname(directory.rstrip('/')),
                      f'.{task_type}-{task_id}-tmp', os.path.basename(directory.rstrip('/')))


# Preemption tests kill a worker between two checkpoints; on a fast machine a tiny run can finish
# before the test sees its first checkpoint. With this variable set to N, every worker stops right
# after writing checkpoint N, says so on stdout and waits there to be killed, so the test kills a
# run that is certainly mid-way instead of skipping. Unset (always, outside tests), it does nothing.
PAUSE_ENV = 'AGKD_TF_PAUSE_AFTER_CHECKPOINT'


def pause_after_checkpoint(number, seconds=600):
  if os.environ.get(PAUSE_ENV) == str(number):
    print(f'paused after checkpoint {number} ({PAUSE_ENV})', flush=True)
    time.sleep(seconds)


class Checkpoints:
  """The run's checkpoints: restore the newest that restores, save, and clean up.

  Every worker restores from the chief's checkpoints and saves with all the others, but a
  non-chief worker's copy goes to a temporary directory removed after each save.
  """

  def __init__(self, model_dir, checkpoint, strategy, keep):
    self.model_dir = model_dir
    self.checkpoint = checkpoint
    self.directory = os.path.join(model_dir, 'checkpoints')
    self.chief = strategy_utils.is_chief(strategy)
    self._write_dir = write_dir(self.directory, strategy)
    if self.chief:
      remove_save_leftovers(self.directory)
    else:
      self._remove_worker_copy()  # A killed worker's leftovers.
    self._manager = tf.train.CheckpointManager(checkpoint, self._write_dir,
                                               max_to_keep=keep if self.chief else 1)

  def _remove_worker_copy(self):
    shutil.rmtree(os.path.dirname(self._write_dir), ignore_errors=True)

  def restore(self):
    """Restores the newest checkpoint that restores; returns its path, or None for a new run."""
    return restore(self.checkpoint, self.directory, self.model_dir)

  def save(self, number):
    self._manager.save(checkpoint_number=number)
    if not self.chief:
      self._remove_worker_copy()
    pause_after_checkpoint(number)

  def latest(self):
    return tf.train.latest_checkpoint(self.directory)

  def close(self):
    """A non-chief worker's temporary copy goes; the chief's checkpoints stay."""
    if not self.chief:
      self._remove_worker_copy()
