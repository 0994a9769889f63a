"""Robustness evaluation that checks itself: white-box attacks, AutoAttack, integrity checks and
gradient-masking diagnostics.

Many defences look robust only because their gradients are masked (Athalye et al., ICML 2018;
Croce & Hein, ICML 2020: Feature Scattering and Bilateral lose 24 to 29 points under AutoAttack).
`evaluate(config)` therefore does more than run attacks:

- Integrity, on every adversarial batch (`runner.py`): ||x_adv - x||_inf <= eps + 1e-6, x_adv in
  [0, 1] and finite. The model is always run in inference mode and every attack is given the true
  labels (no label leaking). A violation raises `IntegrityError`; it never becomes a silent number.
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
import numpy as np
import tensorflow as tf

from agkd_tf import attacks as attacks_lib
from agkd_tf import data as data_lib
from agkd_tf import io_utils
from agkd_tf.core.errors import UserError
from agkd_tf.core import options
from agkd_tf.core.options import option
from agkd_tf.evaluation import loading
from agkd_tf.evaluation import masking
from agkd_tf.evaluation import report as eval_report
from agkd_tf.evaluation import runner as runner_lib


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  """What to evaluate and how; the flags of `python -m agkd_tf.evaluate` are its option fields."""
  model_dir: Optional[str] = option(None, 'A training run of ours to evaluate.')
  saved_model: Optional[str] = option(None, 'Or any SavedModel taking float32 NHWC images in '
                                      '[0, 1] and returning logits (bring your own model).')
  dataset: Optional[str] = data_lib.dataset_option(None, 'the --model_dir run\'s own')
  data_dir: Optional[str] = data_lib.data_dir_option()
  attacks: Sequence[str] = option(eval_report.DEFAULT_ATTACKS, 'Attacks: clean, fgsm, bim<n>, '
                                  'pgd<n>, cw<n>, mim<n>, aa (AutoAttack).')
  eps: float = option(8 / 255, 'L-inf budget in pixel units, e.g. 8/255.', lower=0.0,
                      lower_open=True, upper=0.5, fraction=True)
  num_examples: int = option(1000, 'Class-balanced test subset (0: the whole split).', lower=0)
  aa_examples: int = option(0, 'AutoAttack on the first N of them (0: all).', lower=0)
  aa_version: str = option('standard', 'AutoAttack version: standard (APGD-CE, APGD-T, FAB-T, '
                           'Square), plus (with restarts and untargeted DLR/FAB) or rand (EOT, '
                           'for randomised defences).', choices=('standard', 'plus', 'rand'),
                           label='AutoAttack version')
  batch_size: int = option(256, 'Attack batch size.', lower=1)
  seed: int = option(0, 'Seed of random starts and AutoAttack.')
  attack_backend: str = option('native', 'Our compiled attacks or cleverhans 4 (AutoAttack is '
                               'always ours).', choices=('native', 'cleverhans'),
                               label='attack backend')
  output_dir: Optional[str] = option(None, 'Where eval.json / eval.md go (default: '
                                     'model_dir/eval).')
  masking_checks: bool = option(True, 'Gradient-masking diagnostics (PGD-20 restarts, eps sweep '
                                'with plot, randomness).')
  eps_sweep: Sequence[float] = (2 / 255, 4 / 255, 8 / 255, 16 / 255)
  knn: bool = option(False, 'k-NN (k=50) vs softmax accuracy on embeddings (Table 6).')
  knn_k: int = 50
  knn_train_examples: int = option(0, 'Training images in the k-NN memory (0: all).', lower=0)
  tsne: bool = option(False, 't-SNE figures per attacked class (Figures 1-4).')
  transfer_from: Optional[str] = option(None, 'Source run or SavedModel for black-box PGD-20 '
                                        'transfer.')
  verbose: int = option(1, '0: quiet, 1: progress bars.', lower=0, upper=1)


def _pct(v):
  return None if v is None else 100.0 * float(v)


def check_config(config: EvalConfig):
  """Raises UserError for attack names, backend, AutoAttack version or eps out of range."""
  for name in config.attacks:
    if name not in ('clean', 'aa'):
      attacks_lib.get_attack(name)  # Unknown names fail before any work.
  if config.dataset:
    data_lib.validate_name(config.dataset)  # Before the model loads.
  problems = options.check(config)  # Backend, AutoAttack version and eps: the flags' ranges.
  if problems:
    raise UserError(problems[0])


def evaluate(config: EvalConfig):
  """Evaluates a model; returns the report dict also written to eval.json.

  Raises:
    UserError: bad input; IntegrityError: an attack broke the threat model.
  """
  check_config(config)
  model = loading.load_model(config.model_dir, config.saved_model)
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
    from agkd_tf.evaluation import analysis  # pylint: disable=g-import-not-at-top
    result['knn'] = analysis.knn_table(model, splits, runner, adversarial.get('pgd20'),
                                       config.knn_k, config.batch_size)
  if config.tsne:
    from agkd_tf.evaluation import analysis  # pylint: disable=g-import-not-at-top
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
  runner = runner_lib.AttackRunner(model, x, y, config)
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
      'seconds': times, 'max_perturbation': max_dev, 'masking_flags': flags,
      'correct_per_image': per_image(correct), **extra,
  }
  return result, runner, adversarial


def per_image(correct):
  """{attack: '0110...'}: each test image's verdict, in the evaluation's image order.

  Two models judged on the same images can then be compared image by image (a paired test,
  far tighter than comparing two accuracies when their verdicts agree on most images). '1' is
  correctly classified (robust), '0' not; AutoAttack's string covers its first aa_examples images.
  """
  return {name: ''.join('1' if c else '0' for c in np.asarray(v, bool))
          for name, v in correct.items()}


def _autoattack(model, runner, config, log, correct, acc, times, extra):
  """AutoAttack on the first `aa_examples` images, checked like every other attack."""
  from agkd_tf.attacks import autoattack  # pylint: disable=g-import-not-at-top
  n = config.aa_examples or len(runner.y)
  aa = autoattack.AutoAttack(model.logits_fn, config.eps, version=config.aa_version,
                             seed=config.seed, log=log if config.verbose else None)
  start = time.perf_counter()
  x_aa, report = aa.run(runner.x[:n], runner.y[:n], batch_size=config.batch_size)
  runner_lib.check_batch(runner.x[:n], x_aa, config.eps, 'aa')
  times['aa'] = time.perf_counter() - start
  acc['aa'] = _pct(report['final_robust_accuracy'])
  correct['aa'] = report['robust_points']
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
  source = loading.load_model(*((config.transfer_from, None) if os.path.isfile(
      os.path.join(config.transfer_from, 'model_spec.json')) else (None, config.transfer_from)))
  source_runner = runner_lib.AttackRunner(source, runner.x, runner.y, config)
  (_, x_src), _ = source_runner.attack('pgd20', keep=True)
  preds = np.concatenate([
      np.argmax(runner.model.logits_fn(tf.constant(x_src[i:i + 256])).numpy(), -1)
      for i in range(0, len(x_src), 256)])
  extra['transfer_pgd20'] = _pct((preds == runner.y).mean())
  extra['transfer_source'] = config.transfer_from
