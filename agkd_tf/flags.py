"""The flags of the agkd_tf binaries, defined in one place with their validators.

Flagfiles in `flags/` set these; the resolved values are written to `model_dir/flags.json`.
eps and step sizes accept fractions such as `8/255`, and are in pixel units of [0, 1] images.
"""

from absl import flags

from agkd_tf import strategy_utils

FLAGS = flags.FLAGS


def parse_fraction(text):
  """'8/255' -> 0.03137..., '0.031' -> 0.031."""
  text = str(text).strip()
  if '/' in text:
    num, _, den = text.partition('/')
    return float(num) / float(den)
  return float(text)


class FractionParser(flags.FloatParser):
  """A float flag that also accepts 'a/b'."""

  def parse(self, argument):
    try:
      value = parse_fraction(argument)
    except (ValueError, ZeroDivisionError):
      raise ValueError(f'expected a number or a fraction such as 8/255, got "{argument}"') from None
    return super().parse(value)


def define_fraction(name, default, help_text):
  flags.DEFINE(FractionParser(), name, default, help_text,
               serializer=flags.ArgumentSerializer())


def _eps_check(name, upper=0.5):
  flags.register_validator(
      name, lambda v: v is None or 0.0 <= v <= upper,
      message=f'--{name} must lie in [0, {upper}] in pixel units of [0, 1] images '
              '(8/255 = 0.0314, not 8)')


def define_data_flags():
  flags.DEFINE_string('dataset', 'cifar10', 'cifar10 | svhn | tiny_imagenet | folder:PATH | '
                      'npz:PATH | synthetic[:SIZE] (synthetic is for tests and smoke runs only).')
  flags.DEFINE_string('data_dir', None, 'TFDS data directory (cifar10, svhn) or the '
                      'tiny-imagenet-200 folder.')
  flags.DEFINE_integer('train_examples', 0, 'Class-balanced training subset size (0: all).',
                       lower_bound=0)
  flags.DEFINE_integer('test_examples', 0, 'Class-balanced test subset size (0: all).',
                       lower_bound=0)
  flags.DEFINE_integer('seed', 0, 'Seed of data order, augmentation, subsets and attacks.')


def define_train_flags():
  """Flags of `python -m agkd_tf.train`."""
  define_data_flags()
  flags.DEFINE_string('model_dir', None, 'Run directory (checkpoints, summaries, export).')
  flags.DEFINE_string('model', 'wrn-28-10', 'Network of the model zoo.')
  flags.DEFINE_string('method', 'natural', 'Training method (defence).')
  flags.DEFINE_string('init_from', None, 'A finished run (any method) whose network weights this '
                      'run starts from, e.g. a natural teacher to fine-tune robustly; it must '
                      'have the same model, input shape and classes. AGKD-BML starts from its '
                      'teacher without it. A resumed run restores its own checkpoint instead.')
  _define_method_flags()
  _define_optimiser_flags()
  _define_runtime_flags()
  _define_run_flags()
  flags.mark_flag_as_required('model_dir')


def _define_method_flags():
  """The defences' hyper-parameters (flags.json records them; methods read them by name)."""
  flags.DEFINE_float('label_smoothing', None, 'Official label smoothing: 1 - s on the true '
                     'class, s / (K - 1) on the others (default: the method\'s official value, '
                     '0.5 for agkd_bml and feature_scatter, 0 otherwise).')
  flags.register_validator('label_smoothing', lambda v: v is None or 0.0 <= v < 1.0,
                           message='--label_smoothing must lie in [0, 1)')
  define_fraction('eps', 8 / 255, 'L-inf budget in pixel units, e.g. 8/255.')
  _eps_check('eps')
  define_fraction('step_size', 2 / 255, 'Attack step in pixel units, e.g. 2/255.')
  _eps_check('step_size')
  flags.DEFINE_integer('attack_steps', 10, 'Training-time attack steps (K).', lower_bound=0)
  # AGKD-BML (Wang et al., ICCV 2021) and its ablations.
  flags.DEFINE_string('teacher_dir', None, 'AGKD-BML: a finished natural run whose network is '
                      'the frozen teacher (and the student\'s initial weights).')
  flags.DEFINE_enum('teacher', 'dir', ['dir', 'train'], 'AGKD-BML: "dir" uses --teacher_dir; '
                    '"train" first trains a natural teacher in --teacher_dir (default: '
                    'MODEL_DIR/teacher) with this run\'s data, model and optimiser, for '
                    '--teacher_epochs with decays at 50% and 75% of them (200: 100, 150).')
  flags.DEFINE_integer('teacher_epochs', 0, 'Epochs of a --teacher=train teacher (0: --epochs).',
                       lower_bound=0)
  flags.DEFINE_float('teacher_label_smoothing', 0.5, 'Label smoothing of a --teacher=train '
                     'teacher (the official teacher uses 0.5).', lower_bound=0.0, upper_bound=0.99)
  flags.DEFINE_bool('mart', True, 'AGKD-BML: add the MART BCE and weighted-KL terms.')
  flags.DEFINE_float('mart_beta', 6.0, 'Weight of MART\'s KL term.', lower_bound=0.0)
  flags.DEFINE_enum('attention', 'channel_sum',
                    ['channel_sum', 'gradcam_orig', 'gradcam_false', 'cam_avg', 'none'],
                    'AGKD-BML attention map distilled from the teacher (Table 3).')
  flags.DEFINE_enum('metric', 'bml', ['bml', 'sml', 'none'], 'AGKD-BML metric learning: '
                    'bi-directional, single-directional, or none (ablations).')
  flags.DEFINE_float('metric_weight', 2.0, 'lambda1: weight of the triplet term.', lower_bound=0.0)
  flags.DEFINE_float('margin', 0.03, 'Angular triplet margin.', lower_bound=0.0, upper_bound=1.0)
  flags.DEFINE_float('trades_beta', 6.0, 'TRADES: weight of the KL term (1/lambda).',
                     lower_bound=0.0)
  flags.DEFINE_enum('cat_loss', 'ce', ['ce', 'mix'], 'CAT: "ce", or "mix" (adds the CW hinge).')
  flags.DEFINE_enum('agkd_loss', 'official', ['official', 'trades'], 'AGKD-BML adversarial '
                    'term: "official" (LSCE on x1\' plus MART, per --mart) or "trades" (ours, '
                    'not the paper\'s: CE on x1 plus --trades_beta x KL(p(x1) || p(x1\'))).')
  flags.DEFINE_enum('agkd_attack', 'targeted', ['targeted', 'untargeted'], 'AGKD-BML forward '
                    'attack: "targeted" toward the most confusing class (official) or '
                    '"untargeted" CE ascent away from the true class (ours, not the paper\'s).')
  flags.DEFINE_float('norm_weight', 0.001, 'lambda2: weight of the embedding-norm regulariser.',
                     lower_bound=0.0)


def _define_optimiser_flags():
  """Epochs, batch and the SGD schedule."""
  flags.DEFINE_integer('epochs', 200, 'Training epochs.', lower_bound=1)
  flags.DEFINE_integer('batch_size', 128, 'Global batch size (summed over replicas).')
  flags.register_validator('batch_size', lambda v: 1 <= v <= 65536,
                           message='--batch_size must lie in [1, 65536]')
  flags.DEFINE_float('lr', 0.1, 'Base learning rate.')
  flags.register_validator('lr', lambda v: 0.0 < v <= 10.0, message='--lr must lie in (0, 10]')
  flags.DEFINE_float('momentum', 0.9, 'SGD momentum.', lower_bound=0.0, upper_bound=1.0)
  flags.DEFINE_bool('nesterov', False, 'Nesterov momentum.')
  flags.DEFINE_float('weight_decay', 2e-4, 'PyTorch-style (coupled) weight decay.',
                     lower_bound=0.0, upper_bound=1.0)
  flags.DEFINE_enum('weight_decay_variables', 'all', ['all', 'kernels'],
                    'Decay every parameter (PyTorch default) or conv/dense kernels only.')
  flags.DEFINE_enum('lr_schedule', 'piecewise', ['piecewise', 'cosine', 'constant'],
                    'Learning-rate schedule.')
  flags.DEFINE_list('lr_decay_epochs', ['100', '150'], 'Epochs at which lr is multiplied by '
                    '--lr_decay_factor (piecewise).')
  flags.register_validator('lr_decay_epochs', lambda v: all(e.strip().isdigit() for e in v),
                           message='--lr_decay_epochs must be a comma-separated list of epochs')
  flags.DEFINE_float('lr_decay_factor', 0.1, 'Piecewise decay factor.', lower_bound=0.0,
                     upper_bound=1.0)
  flags.DEFINE_float('warmup_epochs', 0.0, 'Linear warm-up epochs.', lower_bound=0.0)


def _define_runtime_flags():
  """Devices, compilation, precision and the input pipeline."""
  flags.DEFINE_string('strategy', 'auto', 'auto | one_device | mirrored | multi_worker.')
  flags.register_validator('strategy', lambda v: v in strategy_utils.STRATEGIES,
                           message='--strategy must be one of ' +
                           ', '.join(strategy_utils.STRATEGIES))
  flags.DEFINE_integer('cpu_devices', 1, 'Split the CPU into this many logical devices (to try '
                       '--strategy=mirrored without GPUs).', lower_bound=1, upper_bound=64)
  flags.DEFINE_enum('jit_compile', 'auto', ['auto', 'true', 'false'],
                    'XLA for the train step (auto: on for GPU, off for CPU).')
  flags.DEFINE_enum('attack_dtype', 'auto', ['auto', 'float32', 'bfloat16'],
                    'Compute dtype of the training-time attacks (auto: the network\'s own). '
                    'bfloat16 pays off only where the hardware has it (GPUs, AMX CPUs); '
                    'evaluation attacks are always float32.')
  flags.DEFINE_enum('mixed_precision', 'auto', ['auto', 'bfloat16', 'float16', 'float32'],
                    'Compute precision (auto: bfloat16 on GPU, float32 on CPU); logits stay '
                    'float32.')
  flags.DEFINE_bool('sync_bn', False, 'Synchronise BatchNorm statistics across replicas.')
  flags.DEFINE_bool('augment', True, 'Random 4-pixel pad-and-crop and horizontal flip of the '
                    'training images, as every official recipe does (--noaugment: off).')


def _define_run_flags():
  """Checkpoints, logging, evaluation during training, export and failure policy."""
  flags.DEFINE_integer('checkpoint_every_steps', 1000, 'Checkpoint interval in steps (plus every '
                       'epoch end).', lower_bound=0)
  flags.DEFINE_integer('keep_checkpoints', 3, 'Checkpoints to keep.', lower_bound=1)
  flags.DEFINE_integer('log_every_steps', 50, 'TensorBoard interval in steps.', lower_bound=0)
  flags.DEFINE_integer('eval_every', 0, 'Evaluate clean and PGD accuracy on the held-out subset '
                       'every N epochs (0: only at the end).', lower_bound=0)
  flags.DEFINE_integer('eval_examples', 1000, 'Held-out test subset for PGD evaluation.',
                       lower_bound=1)
  flags.DEFINE_integer('eval_attack_steps', 10, 'PGD steps of the evaluation (0: clean only).',
                       lower_bound=0)
  flags.DEFINE_integer('eval_batch_size', 256, 'Evaluation batch size.', lower_bound=1)
  flags.DEFINE_integer('verbose', 1, '0: quiet, 1: progress bar, 2: one line per epoch.',
                       lower_bound=0, upper_bound=2)
  flags.DEFINE_bool('export', True, 'Export a SavedModel to model_dir/export at the end.')
  flags.DEFINE_integer('max_steps', 0, 'Stop after this many global steps (0: all epochs).',
                       lower_bound=0)
  flags.DEFINE_bool('deterministic', False, 'Deterministic ops '
                    '(tf.config.experimental.enable_op_determinism) on top of the seeds, so a '
                    'rerun, or a run resumed after a kill, gives the same weights bit for bit '
                    '(slower, notably on GPU).')
  flags.DEFINE_enum('nan_policy', 'stop', ['stop', 'skip_batch'], 'On a non-finite loss: '
                    '"stop" with the step, the bad term and the last good checkpoint; '
                    '"skip_batch" leaves weights, BatchNorm statistics, optimiser state and '
                    'epoch means as they were before the step, logs it and goes on.')


def define_export_flags():
  """Flags of `python -m agkd_tf.export`."""
  flags.DEFINE_string('model_dir', None, 'Training run directory.')
  flags.DEFINE_string('export_dir', None, 'Where to write the SavedModel (default: '
                      'model_dir/export).')
  flags.DEFINE_string('checkpoint', None, 'Checkpoint prefix (default: the latest).')
  flags.mark_flag_as_required('model_dir')


def define_evaluate_flags():
  """Flags of `python -m agkd_tf.evaluate`."""
  flags.DEFINE_string('model_dir', None, 'A training run of ours to evaluate.')
  flags.DEFINE_string('saved_model', None, 'Or any SavedModel taking float32 NHWC images in '
                      '[0, 1] and returning logits (bring your own model).')
  flags.DEFINE_string('dataset', None, 'Dataset (default: the run\'s own).')
  flags.DEFINE_string('data_dir', None, 'TFDS data directory or tiny-imagenet-200 folder.')
  flags.DEFINE_list('attacks', ['clean', 'fgsm', 'bim10', 'pgd10', 'pgd20', 'cw10', 'cw20',
                                'mim40', 'aa'],
                    'Attacks: clean, fgsm, bim<n>, pgd<n>, cw<n>, mim<n>, aa (AutoAttack).')
  define_fraction('eps', 8 / 255, 'L-inf budget in pixel units, e.g. 8/255.')
  _eps_check('eps')
  flags.DEFINE_integer('num_examples', 1000, 'Class-balanced test subset (0: the whole split).',
                       lower_bound=0)
  flags.DEFINE_integer('aa_examples', 0, 'AutoAttack on the first N of them (0: all).',
                       lower_bound=0)
  flags.DEFINE_enum('aa_version', 'standard', ['standard', 'plus', 'rand'],
                    'AutoAttack version: standard (APGD-CE, APGD-T, FAB-T, Square), plus (with '
                    'restarts and untargeted DLR/FAB) or rand (EOT, for randomised defences).')
  flags.DEFINE_integer('batch_size', 256, 'Attack batch size.', lower_bound=1)
  flags.DEFINE_integer('seed', 0, 'Seed of random starts and AutoAttack.')
  flags.DEFINE_enum('attack_backend', 'native', ['native', 'cleverhans'],
                    'Our compiled attacks or cleverhans 4 (AutoAttack is always ours).')
  flags.DEFINE_string('output_dir', None, 'Where eval.json / eval.md go (default: '
                      'model_dir/eval).')
  flags.DEFINE_bool('masking_checks', True, 'Gradient-masking diagnostics (PGD-20 restarts, eps '
                    'sweep with plot, randomness).')
  flags.DEFINE_bool('knn', False, 'k-NN (k=50) vs softmax accuracy on embeddings (Table 6).')
  flags.DEFINE_integer('knn_train_examples', 0, 'Training images in the k-NN memory (0: all).',
                       lower_bound=0)
  flags.DEFINE_bool('tsne', False, 't-SNE figures per attacked class (Figures 1-4).')
  flags.DEFINE_string('transfer_from', None, 'Source run or SavedModel for black-box PGD-20 '
                      'transfer.')
  flags.DEFINE_integer('verbose', 1, '0: quiet, 1: progress bars.', lower_bound=0, upper_bound=1)
