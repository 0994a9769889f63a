"""The training loop: plain arguments in, a finished run directory out.

`train(config)` is what `python -m agkd_tf.train` calls, and what tests and benchmarks call
directly. It never reads absl FLAGS. The run directory (`model_dir`) holds:

  checkpoints/      tf.train.Checkpoint of network, optimiser and method state, every
                    `checkpoint_every_steps` steps and at every epoch end; the last
                    `keep_checkpoints` are kept. A rerun of the same command resumes from the latest
                    that restores (an unreadable latest one falls back to the one before).
  summaries/train   TensorBoard: every loss term, accuracies, lr, images/sec, hparams.
  summaries/eval    TensorBoard: clean and PGD-k accuracy on the held-out subset.
  flags.json        the resolved configuration.
  model_spec.json   what is needed to rebuild the network (model, input shape, classes).
  result.json       final metrics, written atomically at the end.
  export/           SavedModel (written to a temporary name, then renamed).

Resume is exact: the data order and augmentation of every epoch are functions of (seed, epoch), so
a run restored at global step k rebuilds its epoch and skips the batches already trained. With
`deterministic=True` (op determinism on top of the seeds) a run killed at any point and rerun ends
with the same weights, bit for bit, as one never interrupted.

Checkpoints are atomic as TensorFlow writes them: shards go to a temporary name, are merged and
renamed, and only then does the `checkpoint` state file (itself written to a temporary file and
renamed) point at them, so a kill mid-save leaves the previous checkpoint as the latest. Leftover
temporary files are removed at start, and a latest checkpoint that still fails to restore (a disk
that lied) makes the run fall back to the previous one rather than fail.

Multi-worker (`tf.distribute.MultiWorkerMirroredStrategy`, cluster from TF_CONFIG): every worker
runs this same loop on its slice of each global batch; every worker takes part in each checkpoint
save (the save all-reduces on-read variables), but only the chief keeps its copy. Only the chief
writes summaries, flags.json, model_spec.json, the export and result.json.

A non-finite loss either stops the run (`nan_policy='stop'`, nothing saved) or, with
`'skip_batch'`, leaves the step without effect: see `_NonFiniteGuard`.
"""

import dataclasses
import glob
import json
import math
import os
import shutil
import sys
import threading
import time
from typing import Optional, Sequence

from absl import logging
import keras
import tensorflow as tf

from agkd_tf import data as data_lib
from agkd_tf import eval_lib
from agkd_tf import io_utils
from agkd_tf import methods
from agkd_tf import models
from agkd_tf import optim
from agkd_tf import strategy_utils
from agkd_tf.data import pipeline
from agkd_tf.errors import UserError


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Everything a training run needs; the flags map onto it one to one."""
  model_dir: str
  dataset: str = 'cifar10'
  data_dir: Optional[str] = None
  train_examples: int = 0
  test_examples: int = 0
  model: str = 'wrn-28-10'
  method: str = 'natural'
  init_from: Optional[str] = None
  label_smoothing: Optional[float] = None  # None: the method's official default.
  eps: float = 8 / 255
  step_size: float = 2 / 255
  attack_steps: int = 10
  teacher_dir: Optional[str] = None
  teacher: str = 'dir'
  teacher_epochs: int = 0
  teacher_label_smoothing: float = 0.5
  mart: bool = True
  mart_beta: float = 6.0
  attention: str = 'channel_sum'
  metric: str = 'bml'
  metric_weight: float = 2.0
  margin: float = 0.03
  norm_weight: float = 0.001
  trades_beta: float = 6.0
  attack_dtype: str = 'auto'
  cat_loss: str = 'ce'
  agkd_loss: str = 'official'
  agkd_attack: str = 'targeted'
  epochs: int = 200
  batch_size: int = 128
  lr: float = 0.1
  momentum: float = 0.9
  nesterov: bool = False
  weight_decay: float = 2e-4
  weight_decay_variables: str = 'all'
  lr_schedule: str = 'piecewise'
  lr_decay_epochs: Sequence[int] = (100, 150)
  lr_decay_factor: float = 0.1
  warmup_epochs: float = 0.0
  strategy: str = 'auto'
  jit_compile: str = 'auto'
  mixed_precision: str = 'auto'
  sync_bn: bool = False
  augment: bool = True
  seed: int = 0
  checkpoint_every_steps: int = 1000
  keep_checkpoints: int = 3
  log_every_steps: int = 50
  eval_every: int = 0
  eval_examples: int = 1000
  eval_attack_steps: int = 10
  eval_batch_size: int = 256
  verbose: int = 1
  export: bool = True
  max_steps: int = 0  # Stop after this many global steps (0: run all epochs); for tests.
  deterministic: bool = False
  nan_policy: str = 'stop'


NAN_POLICIES = ('stop', 'skip_batch')


def _check_config(config):
  methods.validate_name(config.method)
  models.validate_name(config.model)
  data_lib.validate_name(config.dataset)
  if config.strategy not in strategy_utils.STRATEGIES:
    raise UserError(f'unknown strategy "{config.strategy}"; valid: '
                    f'{", ".join(strategy_utils.STRATEGIES)}')
  if config.teacher not in ('dir', 'train'):
    raise UserError(f'unknown teacher "{config.teacher}"; valid: dir, train')
  if config.init_from and not os.path.isfile(os.path.join(config.init_from, 'model_spec.json')):
    raise UserError(f'--init_from={config.init_from} is not a finished training run (it has no '
                    'model_spec.json)')
  check_method_hparams(config)
  if config.lr_schedule not in ('piecewise', 'cosine', 'constant'):
    raise UserError(f'unknown lr schedule "{config.lr_schedule}"; valid: piecewise, cosine, '
                    'constant')
  if config.nan_policy not in NAN_POLICIES:
    raise UserError(f'unknown nan policy "{config.nan_policy}"; valid: {", ".join(NAN_POLICIES)}')
  if (config.nan_policy == 'skip_batch' and
      strategy_utils.resolve_precision(config.mixed_precision) == 'mixed_float16'):
    # The loss-scale optimiser already skips non-finite gradients, but without counting the
    # batch as a step, which would shift the data position of a resumed run.
    raise UserError('--nan_policy=skip_batch does not combine with --mixed_precision=float16; '
                    'use bfloat16 or float32')


def _check_existing_run(model_dir, config):
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


class _NoSummaries:
  """What a non-chief worker writes to TensorBoard: nothing."""

  train = eval = None

  def scalars(self, writer, values, step):
    pass

  def hparams(self, config):
    pass


class _Summaries:
  """TensorBoard writers for summaries/train and summaries/eval."""

  def __init__(self, model_dir):
    self.train = tf.summary.create_file_writer(os.path.join(model_dir, 'summaries', 'train'))
    self.eval = tf.summary.create_file_writer(os.path.join(model_dir, 'summaries', 'eval'))

  def scalars(self, writer, values, step):
    with writer.as_default(step=step):
      for name, value in values.items():
        tf.summary.scalar(name, value)
    writer.flush()

  def hparams(self, config):
    from tensorboard.plugins.hparams import api as hp  # pylint: disable=g-import-not-at-top
    values = {}
    for k, v in dataclasses.asdict(config).items():
      if isinstance(v, (bool, int, float, str)):
        values[k] = v
      elif v is not None:
        values[k] = str(list(v) if isinstance(v, tuple) else v)
    with self.train.as_default():
      hp.hparams(values)


# A checkpoint whose files are damaged (truncated, missing a shard) rather than of another model.
# The checkpoint reader reports a truncated file as an IndexError.
_UNREADABLE = (IndexError, tf.errors.DataLossError, tf.errors.OutOfRangeError,
               tf.errors.NotFoundError, tf.errors.UnknownError)


def _first_line(error):
  text = str(error).strip()
  return text.splitlines()[0][:200] if text else type(error).__name__


def _restore(checkpoint, checkpoint_dir, model_dir):
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


def _remove_save_leftovers(checkpoint_dir):
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


def _attention_summaries(method, summaries, images, labels, step):
  """Per-epoch TensorBoard images of a method's attention maps on a fixed batch, if it has any."""
  if not hasattr(method, 'attention_images'):
    return
  maps = method.attention_images(pipeline.to_float(tf.constant(images)),
                                 tf.constant(labels, tf.int32))
  with summaries.train.as_default(step=step):
    for name, value in maps.items():
      tf.summary.image(name, value, max_outputs=8)


def _first_replica(values, strategy):
  # The strategy is passed, not read with tf.distribute.get_strategy(): the training loop runs
  # outside `strategy.scope()`, where that returns the default strategy, which leaves a
  # MirroredStrategy's PerReplica values unsplit.
  return {k: strategy.experimental_local_results(v)[0] for k, v in values.items()}


# The TrainConfig fields that `method_config` hands to a method, the seed of its generator aside.
# The Python API (`agkd_tf.defend`) takes exactly these as keywords, with the defaults above.
METHOD_HPARAMS = ('label_smoothing', 'eps', 'step_size', 'attack_steps', 'mart', 'mart_beta',
                  'attention', 'metric', 'metric_weight', 'margin', 'norm_weight', 'trades_beta',
                  'attack_dtype', 'cat_loss', 'agkd_loss', 'agkd_attack')
_CHOICES = {'attack_dtype': ('auto', 'float32', 'bfloat16'), 'cat_loss': ('ce', 'mix')}


def check_method_hparams(config):
  """Raises UserError for a method hyper-parameter out of its range or set of names."""
  from agkd_tf.methods import agkd_bml  # pylint: disable=g-import-not-at-top
  choices = dict(_CHOICES, attention=agkd_bml.ATTENTIONS, metric=agkd_bml.METRICS,
                 agkd_loss=agkd_bml.LOSSES, agkd_attack=agkd_bml.FORWARD_ATTACKS)
  for name, valid in choices.items():
    if getattr(config, name) not in valid:
      raise UserError(f'unknown {name} "{getattr(config, name)}"; valid: {", ".join(valid)}')
  for name, upper in (('eps', 0.5), ('step_size', 0.5)):
    value = getattr(config, name)
    if not 0 <= value <= upper:
      raise UserError(f'{name}={value} must lie in [0, {upper}] in pixel units (8/255 = 0.0314)')
  if config.label_smoothing is not None and not 0 <= config.label_smoothing < 1:
    raise UserError(f'label_smoothing={config.label_smoothing} must lie in [0, 1)')
  if config.attack_steps < 0:
    raise UserError(f'attack_steps={config.attack_steps} must be >= 0')


def method_config(config, flip=True, num_train=0):
  """The method hyper-parameters of a TrainConfig (`num_train`: training-set size)."""
  smoothing = config.label_smoothing
  if smoothing is None:
    smoothing = methods.get(config.method).default_label_smoothing
  return methods.MethodConfig(
      label_smoothing=smoothing, flip=flip, num_train=num_train, trades_beta=config.trades_beta,
      cat_loss=config.cat_loss, agkd_loss=config.agkd_loss, agkd_attack=config.agkd_attack,
      eps=config.eps, step_size=config.step_size,
      attack_steps=config.attack_steps, mart=config.mart, mart_beta=config.mart_beta,
      attention=config.attention, metric=config.metric, metric_weight=config.metric_weight,
      margin=config.margin, norm_weight=config.norm_weight,
      attack_dtype=None if config.attack_dtype == 'auto' else config.attack_dtype)


def load_teacher(teacher_dir, config, splits):
  """The frozen teacher network of a finished run (call inside `strategy.scope()`)."""
  if not teacher_dir:
    raise UserError(f'--method={config.method} needs a teacher: --teacher_dir=RUN (a natural '
                    'run, e.g. from flags/cifar10_natural.cfg) or --teacher=train')
  teacher = load_matching_network(teacher_dir, config, splits, 'the teacher in')
  teacher.trainable = False
  return teacher


def load_matching_network(run_dir, config, splits, role):
  """The network of the finished run `run_dir`, checked against this run's model and data.

  Args:
    run_dir: a run directory with a checkpoint.
    config: this run's TrainConfig.
    splits: this run's data.
    role: how errors name the run ('the teacher in', 'the --init_from run').

  Returns:
    The restored float32 network.

  Raises:
    UserError: not a run, no checkpoint, or another model, input shape or number of classes.
  """
  from agkd_tf import export_lib  # pylint: disable=g-import-not-at-top
  network, spec = export_lib.load_network(run_dir)
  check_matching_spec(spec, run_dir, config, splits, role)
  return network


def check_matching_spec(spec, run_dir, config, splits, role):
  """Raises UserError unless the run's model_spec `spec` has this run's network and data shape."""
  want = {'model': config.model, 'input_shape': list(splits.image_shape),
          'num_classes': int(splits.num_classes)}
  for key, value in want.items():
    if spec.get(key) != value:
      raise UserError(f'{role} {run_dir} has {key}={spec.get(key)}, but this run '
                      f'needs {value}')


def build_method(config, splits, strategy, teacher_dir=None):
  """Builds network, method and optimiser inside `strategy.scope()`.

  Methods with `needs_teacher` get the frozen network of `teacher_dir` and start from its
  weights; with `config.init_from`, any method starts from that run's weights instead. Methods
  with `needs_class_bank` get the class-indexed bank of the training set.
  """
  mean, std = splits.channel_stats()
  steps = pipeline.steps_per_epoch(len(splits.y_train), config.batch_size)
  cls = methods.get(config.method)
  with strategy.scope():
    network = models.build(config.model, splits.image_shape, splits.num_classes, mean, std,
                           sync_bn=config.sync_bn)
    teacher = bank = None
    if cls.needs_teacher(config):
      teacher = load_teacher(teacher_dir or config.teacher_dir, config, splits)
      # The student is initialised from the teacher (official AGKD-BML). Normalisation
      # statistics are the teacher's too, so both see the same pixels.
      network.set_weights(teacher.get_weights())
    if config.init_from:
      # BN statistics and the normalisation layer's mean and std come along: the start is the
      # finished network exactly, as it was evaluated.
      network.set_weights(
          load_matching_network(config.init_from, config, splits, 'the --init_from run').get_weights())
    if cls.needs_class_bank(config):
      bank = data_lib.ClassBank(splits.x_train, splits.y_train, splits.num_classes)
    method = methods.build(config.method, network, splits.num_classes,
                           method_config(config, splits.flip, len(splits.y_train)),
                           teacher=teacher, class_bank=bank, seed=config.seed)
    schedule = optim.EpochSchedule(config.lr, steps, config.lr_schedule, config.lr_decay_epochs,
                                   config.lr_decay_factor, config.warmup_epochs, config.epochs)
    optimizer = optim.TorchSGD(schedule, config.momentum, config.nesterov, config.weight_decay,
                               config.weight_decay_variables)
    if keras.mixed_precision.global_policy().name == 'mixed_float16':
      optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    method.compile(optimizer=optimizer, jit_compile=False)
    optimizer.build(network.trainable_variables)
  return network, method, optimizer


class _NonFiniteGuard:
  """Makes an optimiser leave every variable untouched on a step whose loss is not finite.

  Installed on the optimiser instance for `nan_policy='skip_batch'`, so no method has to know:
  `Method.train_step` hands its total loss to `optimizer.scale_loss` and its gradients to
  `optimizer.apply`, which is all the guard needs.

  - `scale_loss` notes this replica's loss.
  - `apply` turns every gradient into NaN when that loss, or any gradient, is not finite. The
    all-reduce sums gradients, so afterwards every replica holds NaN gradients when *any* replica
    had a bad batch, and all replicas decide alike without a collective of their own.
  - `update_step` (per variable, after the all-reduce) runs under a `tf.cond` on finite gradients.
    A skipped variable keeps its value and its momentum; zeroing the gradient would not do, since
    coupled weight decay and momentum would still move the weights.
  The iteration counter still advances: the batch was consumed, and resume, the lr schedule and
  the (seed, step) random draws all count batches.
  """

  def __init__(self, optimizer):
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
      raise ValueError('the non-finite guard does not wrap a LossScaleOptimizer')
    self._local = threading.local()  # MirroredStrategy traces each replica in its own thread.
    scale_loss, apply, update_step = (optimizer.scale_loss, optimizer.apply,
                                      optimizer.update_step)

    def guarded_scale_loss(loss):
      self._local.loss = loss
      return scale_loss(loss)

    def guarded_apply(grads, trainable_variables=None):
      loss = getattr(self._local, 'loss', None)
      bad = (tf.constant(False) if loss is None else
             tf.logical_not(tf.math.is_finite(tf.cast(loss, tf.float32))))
      for g in grads:
        if g is not None:
          bad = tf.logical_or(bad, tf.logical_not(tf.reduce_all(tf.math.is_finite(g))))
      self._local.nonfinite = bad
      poison = tf.where(bad, tf.constant(float('nan')), tf.constant(0.0))
      grads = [g if g is None else g + tf.cast(poison, g.dtype) for g in grads]
      return apply(grads, trainable_variables)

    def guarded_update_step(gradient, variable, learning_rate):
      def update():
        update_step(gradient, variable, learning_rate)
      tf.cond(tf.reduce_all(tf.math.is_finite(gradient)), update, lambda: None)

    optimizer.scale_loss = guarded_scale_loss
    optimizer.apply = guarded_apply
    optimizer.update_step = guarded_update_step

  def nonfinite(self):
    """Whether this replica's last traced step had a non-finite loss or gradient."""
    return self._local.nonfinite


def make_step_fn(method, strategy, jit_compile, nan_policy=None):
  """One distributed train step on the next batch of an iterator, compiled.

  As in Keras's own trainer, `next(iterator)` happens inside the traced function, so tf.data hands
  the batch to the step without a round trip through Python tensors.

  Args:
    method: a built and compiled `methods.Method`.
    strategy: the strategy it was built under.
    jit_compile: XLA for the replica step.
    nan_policy: None for the plain step; 'stop' or 'skip_batch' to also report non-finite
      losses, agreed across all replicas. 'skip_batch' installs `_NonFiniteGuard` on the
      optimiser and restores what the forward pass changed (BatchNorm moving statistics, the
      loss and accuracy trackers) when the step is skipped.

  Returns:
    `step_fn(iterator)`. Without `nan_policy` it returns the method's logs (per replica); with one,
    `(logs, step_logs, nonfinite)`: the logs after the policy, the logs as the step computed them
    (they name the bad term) and whether any replica's loss was not finite.
  """
  if nan_policy is None:
    replica_step = tf.function(method.train_step, jit_compile=jit_compile,
                               reduce_retracing=True)
  elif nan_policy in NAN_POLICIES:
    replica_step = tf.function(_policy_step(method, nan_policy), jit_compile=jit_compile,
                               reduce_retracing=True)
  else:
    raise ValueError(f'unknown nan policy {nan_policy!r}')

  @tf.function(reduce_retracing=True)
  def step_fn(iterator):
    return strategy.run(replica_step, args=(next(iterator),))

  return step_fn


def _policy_step(method, nan_policy):
  """The replica step of `make_step_fn` with a non-finite check (and, skip_batch, the guard)."""
  guard = None
  if nan_policy == 'skip_batch':
    # Once per optimiser: a second guard would only check the same thing twice.
    guard = getattr(method.optimizer, '_nonfinite_guard', None) or _NonFiniteGuard(
        method.optimizer)
    method.optimizer._nonfinite_guard = guard  # pylint: disable=protected-access
  kept = []
  if guard:
    # What the forward pass changes outside the optimiser. The frozen teacher is left out: it is
    # never updated, and copying a WRN's weights every step would cost for nothing.
    teacher = {id(v) for v in method.teacher.weights} if method.teacher is not None else set()
    seen = set()
    for v in list(method.non_trainable_variables) + [v for m in method.metrics
                                                     for v in m.variables]:
      if id(v) not in teacher and id(v) not in seen:
        seen.add(id(v))
        kept.append(v)

  def step(data):
    before = [tf.identity(v.value) for v in kept]
    logs = method.train_step(data)
    if guard:
      bad = guard.nonfinite()
    else:
      bad = tf.logical_not(tf.math.is_finite(logs[method.loss_terms[0]]))
    # Every replica must take the same decision, or their weights (and, across workers, their
    # collectives) part ways.
    count = tf.distribute.get_replica_context().all_reduce(
        tf.distribute.ReduceOp.SUM, tf.cast(bad, tf.float32))
    bad = count > 0
    if not guard:
      return logs, logs, bad
    for v, old in zip(kept, before):
      v.assign(tf.where(bad, old, v.value))
    return {m.name: m.result() for m in method.metrics}, logs, bad

  return step


def _distribute(ds, strategy, global_batch_size):
  """The distributed form of a dataset of global batches.

  One replica: the dataset itself. OneDeviceStrategy's distributed-dataset wrapper halved
  throughput on our CPUs (its prefetch competes with the step for the two cores).

  Several workers: each input pipeline takes its own contiguous slice of every global batch, so
  replica r of N sees examples [r B/N, (r + 1) B/N) of the batch a single device would see, and
  the all-reduced update equals the single-device one. tf.data's auto-sharding is not used: on an
  in-memory dataset it falls back to sharding by element, whose order we would not control.
  """
  replicas = strategy.num_replicas_in_sync
  if replicas == 1:
    return ds
  if strategy_utils.num_workers(strategy) <= 1:
    return strategy.experimental_distribute_dataset(ds)

  def dataset_fn(context):
    pipelines = context.num_input_pipelines
    per_pipeline = global_batch_size // pipelines
    start = context.input_pipeline_id * per_pipeline
    local = ds.map(lambda *parts: tuple(p[start:start + per_pipeline] for p in parts))
    local_replicas = replicas // pipelines
    if local_replicas > 1:
      local = local.rebatch(per_pipeline // local_replicas, drop_remainder=True)
    return local

  return strategy.distribute_datasets_from_function(dataset_fn)


def _describe_bad_terms(logs, loss_terms):
  bad = [n for n in loss_terms[1:] if not math.isfinite(float(logs.get(n, 0.0)))]
  return ', '.join(bad) if bad else loss_terms[0]


# Preemption tests kill a worker between two checkpoints; on a fast machine a tiny run can finish
# before the test sees its first checkpoint. With this variable set to N, every worker stops right
# after writing checkpoint N, says so on stdout and waits there to be killed, so the test kills a
# run that is certainly mid-way instead of skipping. Unset (always, outside tests), it does nothing.
PAUSE_ENV = 'AGKD_TF_PAUSE_AFTER_CHECKPOINT'


def pause_after_checkpoint(number, seconds=600):
  if os.environ.get(PAUSE_ENV) == str(number):
    print(f'paused after checkpoint {number} ({PAUSE_ENV})', flush=True)
    time.sleep(seconds)


def train(config: TrainConfig, strategy=None, splits=None):
  """Trains (or resumes) a run and returns its result dict.

  Args:
    config: the run's `TrainConfig`.
    strategy: a tf.distribute strategy; by default the one named by `config.strategy`.
    splits: preloaded `data.Splits` (tests); by default loaded from `config.dataset`.

  Returns:
    The dict written to result.json.

  Raises:
    UserError: bad names, data, model_dir or checkpoint.
  """
  # The wall time of this call (loading, a teacher trained first, training, final evaluation and
  # export) goes to result.json: the README quotes it, and images_per_sec leaves out everything
  # but the timed steps.
  wall_start = time.time()
  _check_config(config)
  model_dir = os.path.abspath(config.model_dir)
  _check_existing_run(model_dir, config)
  # First: MultiWorkerMirroredStrategy must exist before TensorFlow runs its first op, and the
  # folder loader decodes images with TensorFlow.
  strategy = strategy or strategy_utils.get_strategy(config.strategy)
  if splits is None:
    splits = data_lib.load(config.dataset, config.data_dir, config.train_examples,
                           config.test_examples, config.seed)
  if len(splits.y_train) < config.batch_size:
    raise UserError(f'the training set has {len(splits.y_train)} images, fewer than one batch '
                    f'of --batch_size={config.batch_size}')
  if config.init_from:  # Before anything is written: a mismatch leaves no empty run behind.
    check_matching_spec(io_utils.read_json(os.path.join(config.init_from, 'model_spec.json')),
                        config.init_from, config, splits, 'the --init_from run')
  io_utils.make_writable_dir(model_dir)
  chief = strategy_utils.is_chief(strategy)
  teacher_dir = config.teacher_dir
  if methods.get(config.method).needs_teacher(config) and config.teacher == 'train':
    teacher_dir = os.path.abspath(teacher_dir or os.path.join(model_dir, 'teacher'))
    logging.info('Training the natural teacher in %s first.', teacher_dir)
    # A finished teacher returns at once, so a rerun of the command resumes the student.
    # The teacher's own schedule: the official natural run decays at 50% and 75% of its epochs
    # (100 and 150 of 200), whatever the student's schedule is.
    epochs = config.teacher_epochs or config.epochs
    train(dataclasses.replace(
        config, model_dir=teacher_dir, method='natural', teacher_dir=None, init_from=None,
        label_smoothing=config.teacher_label_smoothing, epochs=epochs,
        lr_decay_epochs=(epochs // 2, epochs * 3 // 4), max_steps=0, eval_attack_steps=0,
        export=False), strategy=strategy, splits=splits)

  keras.utils.set_random_seed(config.seed)
  if config.deterministic:
    # Process-wide and irreversible: every op created from here on is deterministic, or raises
    # if it has no deterministic kernel. The seeds above fix the rest (data order, augmentation,
    # attack starts and class-bank draws are all functions of the seed and the step).
    tf.config.experimental.enable_op_determinism()
  keras.mixed_precision.set_global_policy(strategy_utils.resolve_precision(config.mixed_precision))
  jit = strategy_utils.resolve_jit(config.jit_compile)
  replicas = strategy.num_replicas_in_sync
  if config.batch_size % replicas:
    raise UserError(f'--batch_size={config.batch_size} must be divisible by the {replicas} '
                    'replicas')
  try:
    network, method, optimizer = build_method(config, splits, strategy, teacher_dir)
  finally:
    keras.mixed_precision.set_global_policy('float32')

  steps_per_epoch = pipeline.steps_per_epoch(len(splits.y_train), config.batch_size)
  total_steps = steps_per_epoch * config.epochs
  if config.max_steps:
    total_steps = min(total_steps, config.max_steps)
  with strategy.scope():
    checkpoint = tf.train.Checkpoint(network=network, optimizer=optimizer, method=method)
  checkpoint_dir = os.path.join(model_dir, 'checkpoints')
  # Every worker restores from the chief's checkpoints and saves with all the others, but a
  # non-chief worker's copy goes to a temporary directory removed after each save.
  write_dir = strategy_utils.write_dir(checkpoint_dir, strategy)
  if chief:
    _remove_save_leftovers(checkpoint_dir)
  else:
    shutil.rmtree(os.path.dirname(write_dir), ignore_errors=True)  # A killed worker's leftovers.
  manager = tf.train.CheckpointManager(checkpoint, write_dir,
                                       max_to_keep=config.keep_checkpoints if chief else 1)

  def save(number):
    manager.save(checkpoint_number=number)
    if not chief:
      shutil.rmtree(os.path.dirname(write_dir), ignore_errors=True)
    pause_after_checkpoint(number)

  restored = _restore(checkpoint, checkpoint_dir, model_dir)
  start_step = int(optimizer.iterations.numpy())
  saved_step = start_step if restored else None
  if restored:
    logging.info('Resumed from %s at step %d.', restored, start_step)

  if chief:
    io_utils.write_json_atomic(os.path.join(model_dir, 'flags.json'), dataclasses.asdict(config))
    io_utils.write_json_atomic(os.path.join(model_dir, 'model_spec.json'),
                               model_spec(config, splits))
  summaries = _Summaries(model_dir) if chief else _NoSummaries()
  if not restored:
    summaries.hparams(config)

  # Held-out subset for periodic evaluation: class-balanced, fixed by the seed.
  eval_idx = data_lib.balanced_indices(splits.y_test, config.eval_examples, splits.num_classes,
                                       config.seed + 2)
  x_eval, y_eval = splits.x_test[eval_idx], splits.y_test[eval_idx]

  def run_eval(step):
    clean = eval_lib.accuracy(network, x_eval, y_eval, config.eval_batch_size)
    values = {'accuracy': clean}
    if config.eval_attack_steps:
      values[f'pgd{config.eval_attack_steps}_accuracy'] = eval_lib.accuracy(
          network, x_eval, y_eval, config.eval_batch_size, config.eval_attack_steps, config.eps,
          config.step_size, seed=config.seed)
    summaries.scalars(summaries.eval, values, step)
    return values

  step_fn = make_step_fn(method, strategy, jit, config.nan_policy)
  step = start_step
  train_seconds = 0.0
  timed_images = 0
  skipped = 0
  logs = {}
  interactive = sys.stdout.isatty()
  while step < total_steps:
    epoch = step // steps_per_epoch
    skip = step % steps_per_epoch
    epoch_steps = min(steps_per_epoch, total_steps - epoch * steps_per_epoch)
    ds = pipeline.train_dataset(splits.x_train, splits.y_train, config.batch_size, epoch,
                                config.seed, skip_batches=skip, augment=config.augment,
                                flip=splits.flip, with_index=method.needs_indices)
    ds = ds.take(epoch_steps - skip)
    dist_ds = _distribute(ds, strategy, config.batch_size)
    for m in method.metrics:
      m.reset_state()
    bar = keras.utils.Progbar(epoch_steps, stateful_metrics=[m.name for m in method.metrics],
                              verbose=1 if config.verbose == 1 else 0,
                              interval=0.5 if interactive else 60.0)
    if config.verbose == 1:
      print(f'Epoch {epoch + 1}/{config.epochs}', flush=True)
    epoch_start = time.time()
    epoch_images = 0
    window_start, window_images = time.time(), 0
    iterator = iter(dist_ds)
    for _ in range(epoch_steps - skip):
      t0 = time.time()
      out, step_out, nonfinite = step_fn(iterator)
      logs = {k: float(v) for k, v in _first_replica(out, strategy).items()}
      step += 1
      if bool(strategy.experimental_local_results(nonfinite)[0]):
        step_logs = _first_replica(step_out, strategy)
        terms = _describe_bad_terms({k: float(v) for k, v in step_logs.items()},
                                    method.loss_terms)
        if config.nan_policy == 'stop':
          raise UserError(
              f'the loss became non-finite at step {step} (term: {terms}); stopping without '
              f'saving. Last good checkpoint: '
              f'{tf.train.latest_checkpoint(checkpoint_dir) or "none"}.')
        skipped += 1
        logging.warning('Step %d: the loss is not finite (term: %s); the batch was skipped and '
                        'the weights kept (%d skipped so far).', step, terms, skipped)
        summaries.scalars(summaries.train, {'train/skipped_batch': 1.0}, step)
      if step > start_step + 1:  # The first step includes tracing; keep it out of throughput.
        train_seconds += time.time() - t0
        timed_images += config.batch_size
      epoch_images += config.batch_size
      window_images += config.batch_size
      bar.update(step - epoch * steps_per_epoch, list(logs.items()))
      if config.log_every_steps and step % config.log_every_steps == 0:
        now = time.time()
        lr = float(optimizer.learning_rate)
        summaries.scalars(summaries.train, {**{f'train/{k}': v for k, v in logs.items()},
                                            'train/lr': lr,
                                            'train/images_per_sec':
                                                window_images / max(now - window_start, 1e-9)},
                          step)
        window_start, window_images = now, 0
      if config.checkpoint_every_steps and step % config.checkpoint_every_steps == 0:
        save(step)
        saved_step = step
      if step >= total_steps:
        break
    epoch_time = time.time() - epoch_start
    # A plain counter rather than the manager's state: all workers must decide alike, and a
    # non-chief worker's manager forgets its removed checkpoints.
    if saved_step != step:
      save(step)
      saved_step = step
    summary = {f'epoch/{k}': v for k, v in logs.items()}
    summary['epoch/images_per_sec'] = epoch_images / max(epoch_time, 1e-9)
    summary['epoch/seconds'] = epoch_time
    if config.nan_policy == 'skip_batch':
      summary['epoch/skipped_batches'] = skipped
    summaries.scalars(summaries.train, summary, step)
    if chief:
      _attention_summaries(method, summaries, x_eval[:8], y_eval[:8], step)
    line = ' '.join(f'{k}={v:.4f}' for k, v in logs.items())
    message = (f'epoch {epoch + 1}/{config.epochs} step {step}: {line} '
               f'lr={float(optimizer.learning_rate):.5f} '
               f'{summary["epoch/images_per_sec"]:.1f} images/sec {epoch_time:.1f}s')
    if skipped:
      message += f' skipped={skipped}'
    if chief and config.eval_every and (epoch + 1) % config.eval_every == 0 and step < total_steps:
      values = run_eval(step)
      message += ' | eval ' + ' '.join(f'{k}={v:.4f}' for k, v in values.items())
    if config.verbose:
      print(message, flush=True)
    else:
      logging.info('%s', message)

  if not chief:
    # The chief evaluates, exports and writes result.json; nothing after this needs the others.
    shutil.rmtree(os.path.dirname(write_dir), ignore_errors=True)
    return {'steps': step, 'chief': False, 'skipped_steps': skipped}
  result_path = os.path.join(model_dir, 'result.json')
  if start_step >= total_steps and os.path.exists(result_path):
    logging.info('The run in %s is already complete.', model_dir)
    return io_utils.read_json(result_path)

  # Final evaluation: clean accuracy on the whole test split, PGD on the held-out subset.
  clean = eval_lib.accuracy(network, splits.x_test, splits.y_test, config.eval_batch_size)
  result = {
      'dataset': config.dataset, 'model': config.model, 'method': config.method,
      'epochs': config.epochs, 'steps': step, 'train_examples': int(len(splits.y_train)),
      'test_examples': int(len(splits.y_test)), 'clean_accuracy': clean,
      'images_per_sec': timed_images / train_seconds if train_seconds else None,
      'replicas': replicas, 'jit_compile': jit, 'deterministic': config.deterministic,
  }
  if config.nan_policy == 'skip_batch':
    result['skipped_steps'] = skipped  # In this invocation; TensorBoard has every one.
  eval_values = {'test/accuracy': clean}
  if config.eval_attack_steps:
    key = f'pgd{config.eval_attack_steps}_accuracy'
    result[key] = eval_lib.accuracy(network, x_eval, y_eval, config.eval_batch_size,
                                    config.eval_attack_steps, config.eps, config.step_size,
                                    seed=config.seed)
    result['attack_examples'] = int(len(y_eval))
    result['eps'] = config.eps
    eval_values[f'test/{key}'] = result[key]
  summaries.scalars(summaries.eval, eval_values, step)
  if config.export:
    from agkd_tf import export_lib  # pylint: disable=g-import-not-at-top
    result['export_dir'] = export_lib.export_run(model_dir)
  # A resumed run's earlier invocations are not in wall_seconds; start_step > 0 says so.
  result['wall_seconds'] = time.time() - wall_start
  result['start_step'] = start_step
  io_utils.write_json_atomic(result_path, result)
  logging.info('Result: %s', json.dumps(result))
  return result
