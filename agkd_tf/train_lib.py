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
from agkd_tf.core import options
from agkd_tf.core.errors import UserError
from agkd_tf.core.options import option
from agkd_tf.core.options import REQUIRED
from agkd_tf.data import pipeline
from agkd_tf.methods import hparams


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig(hparams.AllHParams):
  """Everything a training run needs; the flags of `python -m agkd_tf.train` are its fields.

  Each field states its default, help and range once (`core.options.option`); `agkd_tf.flags`
  defines the flags from them. The methods' hyper-parameters (eps, attack_steps, trades_beta, ...)
  are inherited from `methods.hparams.AllHParams`.
  """
  # The data.
  dataset: str = data_lib.dataset_option('cifar10')
  data_dir: Optional[str] = data_lib.data_dir_option()
  train_examples: int = option(0, 'Class-balanced training subset size (0: all).', lower=0)
  test_examples: int = option(0, 'Class-balanced test subset size (0: all).', lower=0)
  seed: int = option(0, 'Seed of data order, augmentation, subsets and attacks.')
  # The run.
  model_dir: str = option(REQUIRED, 'Run directory (checkpoints, summaries, export).')
  model: str = option('wrn-28-10', 'Network of the model zoo.')
  method: str = option('natural', 'Training method (defence).')
  init_from: Optional[str] = option(
      None, 'A finished run (any method) whose network weights this run starts from, e.g. a '
      'natural teacher to fine-tune robustly; it must have the same model, input shape and '
      'classes. AGKD-BML starts from its teacher without it. A resumed run restores its own '
      'checkpoint instead.')
  # AGKD-BML's teacher (Wang et al., ICCV 2021): where it comes from.
  teacher_dir: Optional[str] = option(None, 'AGKD-BML: a finished natural run whose network is '
                                      'the frozen teacher (and the student\'s initial weights).')
  teacher: str = option('dir', 'AGKD-BML: "dir" uses --teacher_dir; "train" first trains a '
                        'natural teacher in --teacher_dir (default: MODEL_DIR/teacher) with this '
                        'run\'s data, model and optimiser, for --teacher_epochs with decays at 50% '
                        'and 75% of them (200: 100, 150).', choices=('dir', 'train'))
  teacher_epochs: int = option(0, 'Epochs of a --teacher=train teacher (0: --epochs).', lower=0)
  teacher_label_smoothing: float = option(0.5, 'Label smoothing of a --teacher=train teacher '
                                          '(the official teacher uses 0.5).', lower=0.0,
                                          upper=0.99)
  # The optimiser.
  epochs: int = option(200, 'Training epochs.', lower=1)
  batch_size: int = option(128, 'Global batch size (summed over replicas).', lower=1,
                           upper=65536)
  lr: float = option(0.1, 'Base learning rate.', lower=0.0, lower_open=True, upper=10.0)
  momentum: float = option(0.9, 'SGD momentum.', lower=0.0, upper=1.0)
  nesterov: bool = option(False, 'Nesterov momentum.')
  weight_decay: float = option(2e-4, 'PyTorch-style (coupled) weight decay.', lower=0.0,
                               upper=1.0)
  weight_decay_variables: str = option('all', 'Decay every parameter (PyTorch default) or '
                                       'conv/dense kernels only.', choices=('all', 'kernels'))
  lr_schedule: str = option('piecewise', 'Learning-rate schedule.',
                            choices=('piecewise', 'cosine', 'constant'))
  lr_decay_epochs: Sequence[int] = option(
      (100, 150), 'Epochs at which lr is multiplied by --lr_decay_factor (piecewise).',
      validator=(lambda v: all(str(e).strip().isdigit() for e in v),
                 'must be a comma-separated list of epochs'))
  lr_decay_factor: float = option(0.1, 'Piecewise decay factor.', lower=0.0, upper=1.0)
  warmup_epochs: float = option(0.0, 'Linear warm-up epochs.', lower=0.0)
  # Devices, compilation, precision and the input pipeline.
  strategy: str = option('auto', 'auto | one_device | mirrored | multi_worker.', validator=(
      lambda v: v in strategy_utils.STRATEGIES,
      'must be one of ' + ', '.join(strategy_utils.STRATEGIES)))
  jit_compile: str = option('auto', 'XLA for the train step (auto: on for GPU, off for CPU).',
                            choices=('auto', 'true', 'false'))
  mixed_precision: str = option('auto', 'Compute precision (auto: bfloat16 on GPU, float32 on '
                                'CPU); logits stay float32.',
                                choices=('auto', 'bfloat16', 'float16', 'float32'))
  sync_bn: bool = option(False, 'Synchronise BatchNorm statistics across replicas.')
  augment: bool = option(True, 'Random 4-pixel pad-and-crop and horizontal flip of the training '
                         'images, as every official recipe does (--noaugment: off).')
  # Checkpoints, logging, evaluation during training, export and failure policy.
  checkpoint_every_steps: int = option(1000, 'Checkpoint interval in steps (plus every epoch '
                                       'end).', lower=0)
  keep_checkpoints: int = option(3, 'Checkpoints to keep.', lower=1)
  log_every_steps: int = option(50, 'TensorBoard interval in steps.', lower=0)
  eval_every: int = option(0, 'Evaluate clean and PGD accuracy on the held-out subset every N '
                           'epochs (0: only at the end).', lower=0)
  eval_examples: int = option(1000, 'Held-out test subset for PGD evaluation.', lower=1)
  eval_attack_steps: int = option(10, 'PGD steps of the evaluation (0: clean only).', lower=0)
  eval_batch_size: int = option(256, 'Evaluation batch size.', lower=1)
  verbose: int = option(1, '0: quiet, 1: progress bar, 2: one line per epoch.', lower=0, upper=2)
  export: bool = option(True, 'Export a SavedModel to model_dir/export at the end.')
  max_steps: int = option(0, 'Stop after this many global steps (0: all epochs).', lower=0)
  deterministic: bool = option(False, 'Deterministic ops '
                               '(tf.config.experimental.enable_op_determinism) on top of the '
                               'seeds, so a rerun, or a run resumed after a kill, gives the same '
                               'weights bit for bit (slower, notably on GPU).')
  nan_policy: str = option('stop', 'On a non-finite loss: "stop" with the step, the bad term and '
                           'the last good checkpoint; "skip_batch" leaves weights, BatchNorm '
                           'statistics, optimiser state and epoch means as they were before the '
                           'step, logs it and goes on.', choices=train_step.NAN_POLICIES)


# Groups of TrainConfig fields, in the order `--help` lists them (the method flags come from
# `methods.hparams`, between the run's and the optimiser's).
DATA_FIELDS = ('dataset', 'data_dir', 'train_examples', 'test_examples', 'seed')
RUN_FIELDS = ('model_dir', 'model', 'method', 'init_from')
TEACHER_FIELDS = ('teacher_dir', 'teacher', 'teacher_epochs', 'teacher_label_smoothing')
OPTIMISER_FIELDS = ('epochs', 'batch_size', 'lr', 'momentum', 'nesterov', 'weight_decay',
                    'weight_decay_variables', 'lr_schedule', 'lr_decay_epochs', 'lr_decay_factor',
                    'warmup_epochs')
RUNTIME_FIELDS = ('strategy', 'jit_compile', 'mixed_precision', 'sync_bn', 'augment')
LOOP_FIELDS = ('checkpoint_every_steps', 'keep_checkpoints', 'log_every_steps', 'eval_every',
               'eval_examples', 'eval_attack_steps', 'eval_batch_size', 'verbose', 'export',
               'max_steps', 'deterministic', 'nan_policy')


def _check_config(config):
  methods.validate_name(config.method)
  models.validate_name(config.model)
  data_lib.validate_name(config.dataset)
  problems = options.check(config)  # The ranges the flags check, for configs built in code.
  if problems:
    raise UserError(problems[0])
  if config.init_from and not os.path.isfile(os.path.join(config.init_from, 'model_spec.json')):
    raise UserError(f'--init_from={config.init_from} is not a finished training run (it has no '
                    'model_spec.json)')
  if (config.nan_policy == 'skip_batch' and
      strategy_utils.resolve_precision(config.mixed_precision) == 'mixed_float16'):
    # The loss-scale optimiser already skips non-finite gradients, but without counting the
    # batch as a step, which would shift the data position of a resumed run.
    raise UserError('--nan_policy=skip_batch does not combine with --mixed_precision=float16; '
                    'use bfloat16 or float32')


# The method hyper-parameters a run hands to its method (`method_config`), one definition each in
# `methods.hparams`. The Python API (`agkd_tf.defend`) takes exactly these as keywords.
METHOD_HPARAMS = hparams.names()


def check_method_hparams(config):
  """Raises UserError for a method hyper-parameter out of its range or set of names."""
  problems = hparams.check(config)
  if problems:
    raise UserError(problems[0])


def method_config(config):
  """The hyper-parameters of `config.method`: its own dataclass, label smoothing and
  `--attack_dtype=auto` resolved."""
  cls = methods.get(config.method)
  return cls.resolve(hparams.of(cls.hparams_class, resolve_attack_dtype(config)))


def resolve_attack_dtype(config):
  """`config` with `--attack_dtype=auto` made concrete for this machine (logged when it changes
  what the attacks compute in)."""
  dtype = strategy_utils.resolve_attack_dtype(config.attack_dtype)
  if config.attack_dtype != 'auto' or dtype is None:
    return config
  logging.info('--attack_dtype=auto: training-time attacks in %s (this CPU has %s)', dtype,
               ', '.join(strategy_utils.cpu_bfloat16_flags()))
  return dataclasses.replace(config, attack_dtype=dtype)


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
    method = methods.build(config.method, network, splits.num_classes, method_config(config),
                           teacher=teacher, class_bank=bank, seed=config.seed,
                           flip=splits.flip, augment=config.augment,
                           num_train=len(splits.y_train))
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
