"""The training loop: plain arguments in, a finished run directory out.

`train(config)` is what `python -m agkd_tf.train` calls, and what tests and benchmarks call
directly. It never reads absl FLAGS. It owns the configuration (`TrainConfig` and its checks), the
building of network, method and optimiser, and the epoch loop; the run directory's files and
checkpoints belong to `run_dir`, TensorBoard to `summaries`, the epochs to `train_loop`, the
compiled step and the non-finite policy to `train_step`.

Resume is exact: the data order and augmentation of every epoch are functions of (seed, epoch), so
a run restored at global step k rebuilds its epoch and skips the batches already trained. With
`deterministic=True` (op determinism on top of the seeds) a run killed at any point and rerun ends
with the same weights, bit for bit, as one never interrupted.

Multi-worker (`tf.distribute.MultiWorkerMirroredStrategy`, cluster from TF_CONFIG): every worker
runs this same loop on its slice of each global batch; every worker takes part in each checkpoint
save (the save all-reduces on-read variables), but only the chief keeps its copy. Only the chief
writes summaries, flags.json, model_spec.json, the export and result.json.

A non-finite loss either stops the run (`nan_policy='stop'`, nothing saved) or, with
`'skip_batch'`, leaves the step without effect (`train_step`).
"""

import dataclasses
import json
import os
import time
from typing import Optional, Sequence

from absl import logging
import keras
import tensorflow as tf

from agkd_tf import data as data_lib
from agkd_tf import io_utils
from agkd_tf import methods
from agkd_tf import models
from agkd_tf import optim
from agkd_tf import run_dir
from agkd_tf import strategy_utils
from agkd_tf import summaries as summaries_lib
from agkd_tf import train_loop
from agkd_tf import train_step
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


NAN_POLICIES = train_step.NAN_POLICIES


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
      label_smoothing=smoothing, flip=flip, augment=config.augment, num_train=num_train,
      trades_beta=config.trades_beta,
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
  teacher = run_dir.load_matching_network(teacher_dir, config, splits, 'the teacher in')
  teacher.trainable = False
  return teacher


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
      network.set_weights(run_dir.load_matching_network(
          config.init_from, config, splits, 'the --init_from run').get_weights())
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


def _check_data(config, splits):
  """The data must hold a batch, and an --init_from run must have this network and shape."""
  if len(splits.y_train) < config.batch_size:
    raise UserError(f'the training set has {len(splits.y_train)} images, fewer than one batch '
                    f'of --batch_size={config.batch_size}')
  if config.init_from:  # Before anything is written: a mismatch leaves no empty run behind.
    run_dir.check_matching_spec(
        io_utils.read_json(os.path.join(config.init_from, 'model_spec.json')), config.init_from,
        config, splits, 'the --init_from run')


def _train_teacher_first(config, model_dir, strategy, splits):
  """With --teacher=train, trains (or finds finished) the natural teacher; returns its dir."""
  teacher_dir = config.teacher_dir
  if not (methods.get(config.method).needs_teacher(config) and config.teacher == 'train'):
    return teacher_dir
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
  return teacher_dir


def _build(config, splits, strategy, teacher_dir):
  """Seeds, precision, and (network, method, optimiser) built under the strategy."""
  keras.utils.set_random_seed(config.seed)
  if config.deterministic:
    # Process-wide and irreversible: every op created from here on is deterministic, or raises
    # if it has no deterministic kernel. The seeds above fix the rest (data order, augmentation,
    # attack starts and class-bank draws are all functions of the seed and the step).
    tf.config.experimental.enable_op_determinism()
  keras.mixed_precision.set_global_policy(strategy_utils.resolve_precision(config.mixed_precision))
  replicas = strategy.num_replicas_in_sync
  if config.batch_size % replicas:
    raise UserError(f'--batch_size={config.batch_size} must be divisible by the {replicas} '
                    'replicas')
  try:
    return build_method(config, splits, strategy, teacher_dir)
  finally:
    keras.mixed_precision.set_global_policy('float32')


def train(config: TrainConfig, strategy=None, splits=None):
  """Trains (or resumes) a run and returns its result dict.

  The story of a run: check, load the data, train the teacher first if asked, build, restore,
  loop over the epochs, then (the chief) evaluate, export and write result.json.

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
  run_dir.check_existing_run(model_dir, config)
  # First: MultiWorkerMirroredStrategy must exist before TensorFlow runs its first op, and the
  # folder loader decodes images with TensorFlow.
  strategy = strategy or strategy_utils.get_strategy(config.strategy)
  if splits is None:
    splits = data_lib.load(config.dataset, config.data_dir, config.train_examples,
                           config.test_examples, config.seed)
  _check_data(config, splits)
  io_utils.make_writable_dir(model_dir)
  teacher_dir = _train_teacher_first(config, model_dir, strategy, splits)
  network, method, optimizer = _build(config, splits, strategy, teacher_dir)

  with strategy.scope():
    checkpoint = tf.train.Checkpoint(network=network, optimizer=optimizer, method=method)
  checkpoints = run_dir.Checkpoints(model_dir, checkpoint, strategy, config.keep_checkpoints)
  restored = checkpoints.restore()
  start_step = int(optimizer.iterations.numpy())
  if restored:
    logging.info('Resumed from %s at step %d.', restored, start_step)
  if checkpoints.chief:
    run_dir.write_run_files(model_dir, config, splits)
  writer = summaries_lib.Summaries(model_dir) if checkpoints.chief else summaries_lib.NoSummaries()
  if not restored:
    writer.hparams(config)

  loop = train_loop.Loop(config, splits, strategy, network, method, optimizer, checkpoints,
                         writer, start_step, restored)
  with train_loop.stop_on_signals(loop, strategy_utils.num_workers(strategy) == 1):
    while loop.step < loop.total_steps:
      loop.run_epoch()

  checkpoints.close()
  if not checkpoints.chief:
    # The chief evaluates, exports and writes result.json; nothing after this needs the others.
    return {'steps': loop.step, 'chief': False, 'skipped_steps': loop.skipped}
  if start_step >= loop.total_steps and os.path.exists(run_dir.result_path(model_dir)):
    logging.info('The run in %s is already complete.', model_dir)
    return run_dir.read_result(model_dir)
  result = loop.result()
  if config.export:
    from agkd_tf import export_lib  # pylint: disable=g-import-not-at-top
    result['export_dir'] = export_lib.export_run(model_dir)
  # A resumed run's earlier invocations are not in wall_seconds; start_step > 0 says so.
  result['wall_seconds'] = time.time() - wall_start
  result['start_step'] = start_step
  run_dir.write_result(model_dir, result)
  logging.info('Result: %s', json.dumps(result))
  return result
