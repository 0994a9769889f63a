"""Robustness evaluation that checks itself: white-box attacks, AutoAttack, integrity checks and
gradient-masking diagnostics.

Many defences look robust only because their gradients are masked (Athalye et al., ICML 2018;
Croce & Hein, ICML 2020: Feature Scattering and Bilateral lose 24 to 29 points under AutoAttack).
`evaluate(config)` therefore does more than run attacks:

- Integrity, on every adversarial batch: ||x_adv - x||_inf <= eps + 1e-6, x_adv in [0, 1] and
  finite. The model is always run in inference mode and every attack is given the true labels
  (no label leaking). A violation raises `IntegrityError`; it never becomes a silent number.
- AutoAttack (our native TF2 port, `attacks.autoattack`) beside the paper's attacks.
- Masking diagnostics, printed and saved in the report: AA far below PGD-20; PGD-20 with restarts
  or PGD-100 far below PGD-20; a black-box attack (transfer, or Square inside AA) stronger than the
  white-box ones; robust accuracy not decreasing as eps grows; outputs that change across passes.

The result is one row in the layout of the AGKD-BML paper's Table 1 plus an AA column, written to
`eval.json` and `eval.md` (and TensorBoard scalars when evaluating a training run).
"""

import dataclasses
import os
import time
from typing import Optional, Sequence

from absl import logging
import keras
import numpy as np
import tensorflow as tf

from agkd_tf import attacks as attacks_lib
from agkd_tf import data as data_lib
from agkd_tf import eval_report
from agkd_tf import io_utils
from agkd_tf import masking
from agkd_tf import run_dir
from agkd_tf.errors import UserError

class IntegrityError(RuntimeError):
  """An adversarial batch broke the threat model; the evaluation must not report it."""


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  """What to evaluate and how; the flags of `python -m agkd_tf.evaluate` map onto it."""
  model_dir: Optional[str] = None
  saved_model: Optional[str] = None
  dataset: Optional[str] = None
  data_dir: Optional[str] = None
  attacks: Sequence[str] = eval_report.DEFAULT_ATTACKS
  eps: float = 8 / 255
  num_examples: int = 1000
  aa_examples: int = 0
  aa_version: str = 'standard'
  batch_size: int = 256
  seed: int = 0
  attack_backend: str = 'native'
  output_dir: Optional[str] = None
  masking_checks: bool = True
  eps_sweep: Sequence[float] = (2 / 255, 4 / 255, 8 / 255, 16 / 255)
  knn: bool = False
  knn_k: int = 50
  knn_train_examples: int = 0
  tsne: bool = False
  transfer_from: Optional[str] = None
  verbose: int = 1


@dataclasses.dataclass
class LoadedModel:
  """A model under evaluation: logits (and embeddings for our runs) in inference mode."""
  name: str
  logits_fn: object
  input_shape: tuple
  num_classes: int
  embedding_fn: Optional[object] = None
  dataset: Optional[str] = None
  step: int = 0
  # The loaded SavedModel object: its variables are freed when nothing references it.
  owner: Optional[object] = None


def load_model(model_dir=None, saved_model=None):
  """Loads a training run of ours or any SavedModel mapping [0, 1] NHWC images to logits.

  Raises:
    UserError: neither or both given, unreadable, wrong input layout, or probability outputs.
  """
  if bool(model_dir) == bool(saved_model):
    raise UserError('give exactly one of --model_dir (a run of ours) or --saved_model')
  if model_dir:
    network, spec = run_dir.load_network(model_dir)
    step = 0
    result_path = os.path.join(model_dir, 'result.json')
    if os.path.isfile(result_path):
      step = int(io_utils.read_json(result_path).get('steps', 0))
    return LoadedModel(
        name=os.path.basename(os.path.normpath(model_dir)),
        logits_fn=lambda x: tf.cast(network(x, training=False)['logits'], tf.float32),
        input_shape=tuple(spec['input_shape']), num_classes=int(spec['num_classes']),
        embedding_fn=lambda x: tf.cast(network(x, training=False)['embedding'], tf.float32),
        dataset=spec.get('dataset'), step=step)
  return _load_saved_model(saved_model)


def _load_saved_model(path):
  if not os.path.isfile(os.path.join(path, 'saved_model.pb')):
    raise UserError(f'{path} is not a SavedModel directory (no saved_model.pb)')
  try:
    loaded = tf.saved_model.load(path)
  except Exception as e:  # pylint: disable=broad-except
    raise UserError(f'{path}: the SavedModel cannot be loaded ({type(e).__name__})') from None
  signature = getattr(loaded, 'signatures', {}).get('serving_default')
  if signature is None:
    raise UserError(f'{path} has no serving_default signature')
  inputs = signature.structured_input_signature[1]
  if len(inputs) != 1:
    raise UserError(f'{path}: serving_default must take one image tensor, takes '
                    f'{sorted(inputs)}')
  input_name, spec = next(iter(inputs.items()))
  shape = spec.shape
  if shape.rank != 4 or shape[-1] not in (1, 3) or spec.dtype != tf.float32:
    raise UserError(f'{path}: serving_default must take float32 NHWC images, takes '
                    f'{spec.dtype.name} {shape}')
  outputs = signature.structured_outputs
  out_name = 'logits' if 'logits' in outputs else (next(iter(outputs)) if len(outputs) == 1
                                                     else None)
  if out_name is None:
    raise UserError(f'{path}: serving_default must return "logits" (or a single output), returns '
                    f'{sorted(outputs)}')

  def logits_fn(x):
    return tf.cast(signature(**{input_name: x})[out_name], tf.float32)

  h, w, c = shape[1], shape[2], shape[3]
  num_classes = check_logits(logits_fn, (h, w, c), f'{path}: "{out_name}"')
  return LoadedModel(name=os.path.basename(os.path.normpath(path)), logits_fn=logits_fn,
                     input_shape=(h, w, c), num_classes=num_classes, owner=loaded)


def check_logits(logits_fn, input_shape, what):
  """Probes `logits_fn` on random images; returns K, or raises UserError for non-logits."""
  h, w, c = (d or 32 for d in input_shape)
  probe = tf.random.stateless_uniform([4, h, w, c], [0, 1])
  out = np.asarray(logits_fn(probe))
  if out.ndim != 2:
    raise UserError(f'{what} must be [batch, classes], got {list(out.shape)}')
  if out.min() >= 0 and out.max() <= 1 and np.allclose(out.sum(1), 1, atol=1e-3):
    raise UserError(f'{what} looks like probabilities (rows sum to 1); attacks and defences '
                    'need logits, or their losses are wrong: drop the final softmax')
  return int(out.shape[1])


def _check_batch(x, x_adv, eps, name):
  """Integrity of one adversarial batch (numpy arrays)."""
  if not np.isfinite(x_adv).all():
    raise IntegrityError(f'{name}: adversarial images contain NaN or inf')
  dev = float(np.abs(x_adv - x).max()) if x.size else 0.0
  if dev > eps + 1e-6:
    raise IntegrityError(f'{name}: ||x_adv - x||_inf = {dev:.6f} exceeds eps = {eps:.6f}')
  if x_adv.size and (x_adv.min() < 0.0 or x_adv.max() > 1.0):
    raise IntegrityError(f'{name}: adversarial images leave [0, 1] '
                         f'([{x_adv.min():.6f}, {x_adv.max():.6f}])')
  return dev


def _cleverhans_attack(attack):
  """The same attack through cleverhans 4, for `--attack_backend=cleverhans`."""
  from cleverhans.tf2.attacks import basic_iterative_method as bim_lib  # pylint: disable=g-import-not-at-top
  from cleverhans.tf2.attacks import fast_gradient_method as fgm_lib  # pylint: disable=g-import-not-at-top
  from cleverhans.tf2.attacks import momentum_iterative_method as mim_lib  # pylint: disable=g-import-not-at-top
  from cleverhans.tf2.attacks import projected_gradient_descent as pgd_lib  # pylint: disable=g-import-not-at-top

  def cw_loss(labels, logits):  # cleverhans calls loss_fn(labels=..., logits=...).
    return -attacks_lib.cw_margin_loss(logits, labels)

  common = dict(norm=np.inf, clip_min=0.0, clip_max=1.0, sanity_checks=False)

  def run(model_fn, x, y, eps, seed=None):
    del seed  # cleverhans draws its own random start.
    if attack.family == 'fgsm':
      return fgm_lib.fast_gradient_method(model_fn, x, eps, y=y, **common)
    if attack.family == 'bim':
      return bim_lib.basic_iterative_method(model_fn, x, eps, attack.step_size, attack.steps,
                                            y=y, rand_init=False, **common)
    if attack.family in ('pgd', 'cw'):
      extra = {'loss_fn': cw_loss} if attack.family == 'cw' else {}
      return pgd_lib.projected_gradient_descent(model_fn, x, eps, attack.step_size, attack.steps,
                                                y=y, rand_init=True, rand_minmax=eps, **extra,
                                                **common)
    if attack.family == 'mim':
      return mim_lib.momentum_iterative_method(model_fn, x, eps, attack.step_size, attack.steps,
                                               y=y, decay_factor=1.0, **common)
    raise UserError(f'attack {attack.name} has no cleverhans counterpart')
  return run


class AttackRunner:
  """Runs attacks batch by batch on fixed test images, with integrity checks and progress."""

  def __init__(self, model, x, y, config):
    self.model = model
    self.x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)
    self.y = y.astype(np.int32)
    self.config = config
    self._compiled = {}

  def _fn(self, attack, eps, backend):
    key = (attack, float(eps), backend)
    if key not in self._compiled:
      run = attack if backend == 'native' else _cleverhans_attack(attack)
      logits_fn = self.model.logits_fn

      @tf.function(reduce_retracing=True)
      def fn(x, y, seed):
        x_adv = run(logits_fn, x, y, eps, seed=seed)
        pred = tf.argmax(logits_fn(x_adv), axis=-1, output_type=tf.int32)
        return x_adv, pred == y
      self._compiled[key] = fn
    return self._compiled[key]

  def clean_correct(self):
    preds = []
    for i in range(0, len(self.y), self.config.batch_size):
      logits = self.model.logits_fn(tf.constant(self.x[i:i + self.config.batch_size]))
      preds.append(np.argmax(logits.numpy(), -1))
    return np.concatenate(preds) == self.y

  def attack(self, name, eps=None, seed_offset=0, backend=None, keep=False, step_size=None):
    """Per-example correctness under attack `name` (and the adversarial images if `keep`)."""
    eps = self.config.eps if eps is None else eps
    attack = attacks_lib.get_attack(name)
    if step_size is not None:
      attack = dataclasses.replace(attack, step_size=step_size)
    fn = self._fn(attack, eps, backend or self.config.attack_backend)
    bs = self.config.batch_size
    n_batches = -(-len(self.y) // bs)
    bar = keras.utils.Progbar(n_batches, verbose=1 if self.config.verbose else 0,
                              unit_name='batch')
    correct, advs, max_dev = [], [], 0.0
    for b in range(n_batches):
      x, y = self.x[b * bs:(b + 1) * bs], self.y[b * bs:(b + 1) * bs]
      seed = tf.constant([self.config.seed + seed_offset, b], tf.int32)
      x_adv, ok = fn(tf.constant(x), tf.constant(y), seed)
      x_adv = x_adv.numpy()
      max_dev = max(max_dev, _check_batch(x, x_adv, eps, name))
      correct.append(ok.numpy())
      if keep:
        advs.append(x_adv)
      bar.update(b + 1)
    correct = np.concatenate(correct)
    return (correct, np.concatenate(advs) if keep else None), max_dev


def _pct(v):
  return None if v is None else 100.0 * float(v)


def check_config(config: EvalConfig):
  """Raises UserError for attack names, backend, AutoAttack version or eps out of range."""
  for name in config.attacks:
    if name not in ('clean', 'aa'):
      attacks_lib.get_attack(name)  # Unknown names fail before any work.
  if config.attack_backend not in ('native', 'cleverhans'):
    raise UserError(f'unknown attack backend "{config.attack_backend}"; valid: native, '
                    'cleverhans')
  from agkd_tf.attacks.autoattack import autoattack as aa_lib  # pylint: disable=g-import-not-at-top
  if config.aa_version not in aa_lib.VERSIONS:
    raise UserError(f'unknown AutoAttack version "{config.aa_version}"; valid: '
                    f'{", ".join(aa_lib.VERSIONS)}')
  if not 0 < config.eps <= 0.5:
    raise UserError(f'eps={config.eps} must lie in (0, 0.5] in pixel units (8/255 = 0.0314)')


def evaluate(config: EvalConfig):
  """Evaluates a model; returns the report dict also written to eval.json.

  Raises:
    UserError: bad input; IntegrityError: an attack broke the threat model.
  """
  check_config(config)
  model = load_model(config.model_dir, config.saved_model)
  for option in ('knn', 'tsne'):
    if getattr(config, option) and model.embedding_fn is None:
      raise UserError(f'--{option} needs embeddings, which only a --model_dir run of ours '
                      'provides')
  dataset = config.dataset or model.dataset
  if not dataset:
    raise UserError('--dataset is required with --saved_model')
  output_dir = config.output_dir or (os.path.join(config.model_dir, 'eval') if config.model_dir
                                     else None)
  if not output_dir:
    raise UserError('--output_dir is required with --saved_model')
  splits = data_lib.load(dataset, config.data_dir, config.knn_train_examples if config.knn else 1,
                         config.num_examples, config.seed)
  if tuple(splits.image_shape) != tuple(d for d in model.input_shape):
    if None not in model.input_shape:
      raise UserError(f'the model takes {model.input_shape} images but {dataset} has '
                      f'{splits.image_shape}')
  io_utils.make_writable_dir(output_dir, '--output_dir')
  result, runner, adversarial = assess(model, splits.x_test, splits.y_test, config, dataset,
                                    output_dir)
  if config.knn:
    from agkd_tf import analysis  # pylint: disable=g-import-not-at-top
    result['knn'] = analysis.knn_table(model, splits, runner, adversarial.get('pgd20'),
                                       config.knn_k, config.batch_size)
  if config.tsne:
    from agkd_tf import analysis  # pylint: disable=g-import-not-at-top
    x_adv = adversarial.get('pgd20')
    if x_adv is None:
      (_, x_adv), _ = runner.attack('pgd20', keep=True)
    result['tsne'] = analysis.tsne_figures(model, runner.x, runner.y, x_adv, splits.class_names,
                                           output_dir, config.seed)
  io_utils.write_json_atomic(os.path.join(output_dir, 'eval.json'), result)
  with open(os.path.join(output_dir, 'eval.md.tmp'), 'w') as f:
    f.write(eval_report.markdown(result))
  os.replace(os.path.join(output_dir, 'eval.md.tmp'), os.path.join(output_dir, 'eval.md'))
  if config.model_dir:
    eval_report.write_summaries(config.model_dir, result['accuracy'], model.step)
  return result


def assess(model, x, y, config, dataset, output_dir=None):
  """Attacks `model` on images `x` (uint8 or [0, 1] float) with labels `y`, with every check.

  The evaluation binary and the Python API (`agkd_tf.evaluate_model`) both run this.

  Returns:
    (result, runner, adversarial): the report dict (eval.json's content less k-NN and t-SNE),
    the `AttackRunner` over the images, and the kept adversarial images by attack name.
  """
  runner = AttackRunner(model, x, y, config)
  log = print if config.verbose else logging.info
  acc, times, extra, max_dev = {}, {}, {}, {}
  clean = runner.clean_correct()
  acc['clean'] = _pct(clean.mean())
  if config.masking_checks:
    extra['random_outputs'] = not np.array_equal(clean, runner.clean_correct()) or not np.allclose(
        model.logits_fn(tf.constant(runner.x[:16])).numpy(),
        model.logits_fn(tf.constant(runner.x[:16])).numpy(), atol=1e-5)
  log(f'clean: {acc["clean"]:.2f}% on {len(runner.y)} test images')
  adversarial, correct = {}, {'clean': clean}
  for name in config.attacks:
    if name in ('clean', 'aa'):
      continue
    start = time.perf_counter()
    log(f'{name}:')
    (correct[name], x_adv), max_dev[name] = runner.attack(name, keep=name == 'pgd20')
    if x_adv is not None:
      adversarial[name] = x_adv
    times[name] = time.perf_counter() - start
    acc[name] = _pct(correct[name].mean())
    log(f'{name}: {acc[name]:.2f}% ({times[name]:.1f} s)')
  if 'aa' in config.attacks:
    _autoattack(model, runner, config, log, correct, acc, times, extra)
  if config.masking_checks and 'pgd20' in config.attacks:
    _masking_checks(runner, config, acc, extra, model.name, output_dir)
  if config.transfer_from:
    _transfer(runner, config, extra)
  flags = masking.masking_flags(acc, extra) if config.masking_checks else []
  for flag in flags:
    log(f'WARNING (gradient masking?): {flag}')
  result = {
      'model': model.name, 'model_dir': config.model_dir, 'saved_model': config.saved_model,
      'dataset': dataset, 'eps': config.eps, 'num_examples': len(runner.y),
      'attack_backend': config.attack_backend, 'seed': config.seed, 'accuracy': acc,
      'seconds': times, 'max_perturbation': max_dev, 'masking_flags': flags, **extra,
  }
  return result, runner, adversarial


def _autoattack(model, runner, config, log, correct, acc, times, extra):
  """AutoAttack on the first `aa_examples` images, checked like every other attack."""
  from agkd_tf.attacks import autoattack  # pylint: disable=g-import-not-at-top
  n = config.aa_examples or len(runner.y)
  aa = autoattack.AutoAttack(model.logits_fn, config.eps, version=config.aa_version,
                             seed=config.seed, log=log if config.verbose else None)
  start = time.perf_counter()
  x_aa, report = aa.run(runner.x[:n], runner.y[:n], batch_size=config.batch_size)
  _check_batch(runner.x[:n], x_aa, config.eps, 'aa')
  times['aa'] = time.perf_counter() - start
  acc['aa'] = _pct(report['final_robust_accuracy'])
  extra['aa'] = {k: report[k] for k in ('robust_accuracy', 'attacked', 'flipped', 'time_s',
                                        'warnings', 'skipped', 'max_perturbation')}
  extra['aa_examples'] = n
  extra['aa_version'] = config.aa_version
  extra['aa_warnings'] = report['warnings']
  if 'pgd20' in acc and n < len(runner.y):
    extra['pgd20_on_aa_examples'] = _pct(correct['pgd20'][:n].mean())
    extra['clean_on_aa_examples'] = _pct(correct['clean'][:n].mean())


def _masking_checks(runner, config, acc, extra, name, output_dir):
  """PGD-20 with restarts, the eps sweep (and its plot) and the all but unbounded eps."""
  worst = None
  for r in range(5):
    (correct, _), _ = runner.attack('pgd20', seed_offset=1000 + r)
    worst = correct if worst is None else worst & correct
  extra['pgd20_restarts'] = _pct(worst.mean())
  sweep = {}
  for e in config.eps_sweep:
    if abs(e - config.eps) < 1e-12:
      # The same attack, eps and seeds as the PGD-20 column: reuse it, do not run it again.
      sweep[f'{e:.6f}'] = acc['pgd20']
      continue
    # The step scales with eps (2/255 at the evaluation eps): a fixed 2/255 step is too
    # small to cross a 16/255 ball's worth of loss surface in 20 steps, and would flag a
    # weak attack as masking; too large a step at 2/255 would just bounce off the ball.
    step = attacks_lib.DEFAULT_STEP_SIZE * e / config.eps
    (correct, _), _ = runner.attack('pgd20', eps=e, step_size=step)
    sweep[f'{e:.6f}'] = _pct(correct.mean())
  extra['eps_sweep'] = sweep
  if output_dir:
    masking.eps_plot({name: sweep}, os.path.join(output_dir, 'eps_sweep.png'), name)
  step = attacks_lib.DEFAULT_STEP_SIZE * masking.LARGE_EPS / config.eps
  (correct, _), _ = runner.attack('pgd20', eps=masking.LARGE_EPS, step_size=step)
  extra['large_eps'] = masking.LARGE_EPS
  extra['pgd20_large_eps'] = _pct(correct.mean())


def _transfer(runner, config, extra):
  """PGD-20 examples of another model (`transfer_from`), judged by this one."""
  source = load_model(*((config.transfer_from, None) if os.path.isfile(
      os.path.join(config.transfer_from, 'model_spec.json')) else (None, config.transfer_from)))
  source_runner = AttackRunner(source, runner.x, runner.y, config)
  (_, x_src), _ = source_runner.attack('pgd20', keep=True)
  preds = np.concatenate([
      np.argmax(runner.model.logits_fn(tf.constant(x_src[i:i + 256])).numpy(), -1)
      for i in range(0, len(x_src), 256)])
  extra['transfer_pgd20'] = _pct((preds == runner.y).mean())
  extra['transfer_source'] = config.transfer_from
