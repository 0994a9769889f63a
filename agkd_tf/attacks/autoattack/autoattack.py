"""AutoAttack, standard L-inf (Croce & Hein, ICML 2020), natively in TensorFlow 2.

F. Croce and M. Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", ICML 2020. This follows `run_standard_evaluation` of the official
`autoattack/autoattack.py` (fra31/auto-attack):

- version 'standard': APGD-CE (100 iterations), APGD-T (targeted DLR, 9 targets, 100 iterations
  each), FAB-T (9 targets, 100 iterations, one restart without random start), Square (5000
  queries, p_init 0.8).
- Points the model misclassifies are never attacked. Each attack runs, batch by batch, only on
  the points still robust, and a point's adversarial image is the first one found that
  misclassifies it (the per-point worst case over the attacks).
- Before attacking: the checks for a randomised model and for probability outputs, and for more
  target classes than classes; after: the check that Square did not beat the white-box attacks
  by more than 0.2 points. Zero gradients are checked at the start of APGD-T, as officially.
- version 'plus': APGD-CE and APGD-DLR with 5 restarts, FAB with 5 restarts, Square, APGD-T,
  FAB-T; version 'rand' (randomised defences): APGD-CE and APGD-DLR with 20-pass EOT gradients.

Deviations from the official code: random numbers come from TensorFlow's stateless generators,
with one stream per attack and batch (the official code reseeds PyTorch with the same seed for
every batch), so individual perturbations differ from the PyTorch ones for the same seed. The
check for dynamic defences has no TensorFlow counterpart and is skipped (the official
TensorFlow path skips it too). With fewer than 4 (3) classes the targeted (untargeted) DLR attacks
are skipped with a warning, and the number of targets is capped at the number of classes - 1,
where the official code would fail. See the component modules for their own notes.
"""

import time

import numpy as np

from agkd_tf.attacks.autoattack import apgd as apgd_lib
from agkd_tf.attacks.autoattack import checks
from agkd_tf.attacks.autoattack import common
from agkd_tf.attacks.autoattack import fab as fab_lib
from agkd_tf.attacks.autoattack import square as square_lib

VERSIONS = {
    'standard': ('apgd-ce', 'apgd-t', 'fab-t', 'square'),
    'plus': ('apgd-ce', 'apgd-dlr', 'fab', 'square', 'apgd-t', 'fab-t'),
    'rand': ('apgd-ce', 'apgd-dlr'),
}
# Classes each attack needs: the DLR loss uses the 3rd largest logit, targeted DLR the 4th.
_MIN_CLASSES = {'apgd-dlr': 3, 'apgd-t': 4, 'fab-t': 2}


class AutoAttack:
  """Standard L-inf AutoAttack on a TensorFlow model.

  Example:
    aa = AutoAttack(lambda x: network(x, training=False)['logits'], eps=8 / 255)
    x_adv, report = aa.run(x_test, y_test, batch_size=250)
  """

  def __init__(self, model_fn, eps, version='standard', seed=0, num_classes=None, log=print, *,
               n_iter=100, n_queries=5000, n_target_classes=9):
    """Configures the attacks of `version` with the official hyper-parameters.

    Args:
      model_fn: float32 NHWC images in [0, 1] -> logits, in inference mode (e.g.
        `lambda x: network(x, training=False)['logits']`).
      eps: L-inf budget in pixel units (e.g. 8 / 255).
      version: 'standard', 'plus' or 'rand'.
      seed: int seed; the evaluation is deterministic given it.
      num_classes: number of classes (read from the model's outputs if None).
      log: callable taking one string, for progress and warnings (None: silent).
      n_iter: iterations of APGD and FAB (official: 100; smaller only for tests).
      n_queries: queries of Square (official: 5000; smaller only for tests).
      n_target_classes: targets of APGD-T and FAB-T (official: 9).
    """
    if version not in VERSIONS:
      raise ValueError(f'Unknown AutoAttack version "{version}"; valid: {", ".join(VERSIONS)}')
    if not eps > 0:
      raise ValueError(f'eps must be positive, got {eps}')
    self.model_fn = model_fn
    self.eps = float(eps)
    self.version = version
    self.seed = int(seed)
    self.num_classes = num_classes
    self.log = log or (lambda _: None)
    self.n_iter = int(n_iter)
    self.n_queries = int(n_queries)
    self.n_target_classes = int(n_target_classes)
    self.attacks_to_run = VERSIONS[version]
    self.apgd_restarts = 5 if version == 'plus' else 1
    self.fab_restarts = 5 if version == 'plus' else 1
    self.eot_iter = 20 if version == 'rand' else 1

  def _attack(self, name, x, y, seed, num_classes):
    """Runs one attack on a batch of robust points; returns (adversarial images, n_zero_grad)."""
    targets = min(self.n_target_classes, num_classes - 1)
    if name in ('apgd-ce', 'apgd-dlr'):
      adv, info = apgd_lib.apgd_attack(self.model_fn, x, y, self.eps, n_iter=self.n_iter,
                                       loss=name[len('apgd-'):], n_restarts=self.apgd_restarts,
                                       seed=seed, eot_iter=self.eot_iter, return_info=True)
      # As officially, zero gradients are reported for the DLR losses only (CE saturates
      # legitimately on confidently classified points).
      return adv, info['n_zero_grad'] if name == 'apgd-dlr' else 0
    if name == 'apgd-t':
      adv, info = apgd_lib.apgd_targeted(self.model_fn, x, y, self.eps, n_iter=self.n_iter,
                                         n_target_classes=targets, seed=seed,
                                         eot_iter=self.eot_iter, return_info=True)
      return adv, info['n_zero_grad']
    if name == 'fab-t':
      return fab_lib.fab_attack(self.model_fn, x, y, self.eps, targeted=True,
                                n_target_classes=targets, n_restarts=1, n_iter=self.n_iter,
                                seed=seed), 0
    if name == 'fab':
      return fab_lib.fab_attack(self.model_fn, x, y, self.eps, targeted=False,
                                n_restarts=self.fab_restarts, n_iter=self.n_iter, seed=seed), 0
    if name == 'square':
      return square_lib.square_attack(self.model_fn, x, y, self.eps, n_queries=self.n_queries,
                                      p_init=square_lib.P_INIT, n_restarts=1, seed=seed), 0
    raise ValueError(f'Unknown attack "{name}"')

  def _predict(self, x, batch_size):
    return np.concatenate([common.predict(self.model_fn, x[i:i + batch_size]).numpy()
                           for i in range(0, len(x), batch_size)])

  def _model_checks(self, head_x, head_y):
    """The official checks on a first batch: (warnings, number of classes)."""
    log = self.log
    warnings = []
    if self.version != 'rand':
      warnings += checks.check_randomized(self.model_fn, head_x, head_y, log=log)
    range_warnings, n_cls = checks.check_range_output(self.model_fn, head_x, log=log)
    warnings += range_warnings
    num_classes = int(self.num_classes or n_cls)
    warnings += checks.check_n_classes(num_classes, self.attacks_to_run, self.n_target_classes,
                                       self.n_target_classes, log=log)
    return warnings, num_classes

  def _attack_robust(self, name, attack_idx, x, y, robust, x_adv, batch_size, num_classes):
    """Runs one attack on the points still robust, updating `robust` and `x_adv` in place.

    Returns:
      (points attacked, points it flipped, batches with zero gradients).
    """
    idx_robust = np.flatnonzero(robust)
    flipped = n_zero_grad = 0
    n_batches = -(-len(idx_robust) // batch_size)
    for b in range(n_batches):
      rows = idx_robust[b * batch_size:(b + 1) * batch_size]
      adv, zero = self._attack(name, x[rows], y[rows], (self.seed, attack_idx, b), num_classes)
      n_zero_grad += zero
      adv = adv.numpy()
      fooled = common.predict(self.model_fn, adv).numpy() != y[rows]
      robust[rows[fooled]] = False
      x_adv[rows[fooled]] = adv[fooled]
      flipped += int(fooled.sum())
      self.log(f'{name} - {b + 1}/{n_batches} - {int(fooled.sum())} out of {len(rows)} '
               'successfully perturbed')
    return len(idx_robust), flipped, n_zero_grad

  def run(self, x, y, batch_size=250):
    """Evaluates robust accuracy; returns the per-point worst-case adversarial images.

    Args:
      x: [N, H, W, C] float images in [0, 1] (numpy or tensor).
      y: [N] int labels.
      batch_size: points per attack batch.

    Returns:
      (x_adv, report): x_adv [N, H, W, C] float32 numpy, equal to x for points that are
      misclassified initially or stay robust; report a dict with
        'clean_accuracy': accuracy on x,
        'robust_accuracy': {'clean': ..., attack: accuracy after it, ...} in attack order,
        'final_robust_accuracy': accuracy on x_adv,
        'robust_points': [N] bool numpy, True where x_adv is still classified correctly,
        'attacked': {attack: points it was run on},
        'flipped': {attack: points it made misclassified},
        'time_s': {attack: wall time in seconds, tracing included},
        'warnings': the check warnings (strings),
        'skipped': {attack: reason} for attacks the model's classes rule out,
        'max_perturbation': max ||x_adv - x||_inf,
        plus 'version', 'eps', 'num_points', 'attacks'.
    """
    x, y = _checked_inputs(x, y)
    n = len(x)
    log = self.log
    log(f'using {self.version} version including {", ".join(self.attacks_to_run)}')
    warnings, num_classes = self._model_checks(x[:batch_size], y[:batch_size])

    y_pred = self._predict(x, batch_size)
    robust = y_pred == y
    clean_accuracy = float(robust.mean()) if n else 0.0
    log(f'initial accuracy: {clean_accuracy:.2%}')
    robust_accuracy = {'clean': clean_accuracy}
    attacked, flipped, time_s, skipped = {}, {}, {}, {}
    x_adv = x.copy()
    n_zero_grad = 0
    start_all = time.perf_counter()
    for attack_idx, name in enumerate(self.attacks_to_run):
      start = time.perf_counter()
      attacked[name], flipped[name] = 0, 0
      if num_classes < _MIN_CLASSES.get(name, 2):
        skipped[name] = f'needs at least {_MIN_CLASSES[name]} classes, the model has {num_classes}'
        log(f'skipping {name}: {skipped[name]}')
      else:
        attacked[name], flipped[name], zero = self._attack_robust(
            name, attack_idx, x, y, robust, x_adv, batch_size, num_classes)
        n_zero_grad += zero
      time_s[name] = time.perf_counter() - start
      robust_accuracy[name] = float(robust.mean()) if n else 0.0
      log(f'robust accuracy after {name.upper()}: {robust_accuracy[name]:.2%} '
          f'(total time {time.perf_counter() - start_all:.1f} s)')

    warnings += checks.check_zero_gradients(n_zero_grad, log=log)
    warnings += checks.check_square_sr(robust_accuracy, log=log)
    delta = np.abs(x_adv - x).reshape(n, -1).max(axis=1) if n else np.zeros([0])
    max_pert = float(delta.max()) if n else 0.0
    robust_points = self._predict(x_adv, batch_size) == y if n else np.zeros([0], bool)
    final = float(robust_points.mean()) if n else 0.0
    log(f'max Linf perturbation: {max_pert:.5f}, nan in tensor: {int(np.isnan(x_adv).sum())}, '
        f'max: {x_adv.max() if n else 0:.5f}, min: {x_adv.min() if n else 0:.5f}')
    log(f'robust accuracy: {robust_accuracy[self.attacks_to_run[-1]]:.2%}')
    report = {
        'version': self.version,
        'eps': self.eps,
        'num_points': n,
        'attacks': list(self.attacks_to_run),
        'clean_accuracy': clean_accuracy,
        'robust_accuracy': robust_accuracy,
        'final_robust_accuracy': final,
        'robust_points': robust_points,
        'attacked': attacked,
        'flipped': flipped,
        'time_s': time_s,
        'warnings': warnings,
        'skipped': skipped,
        'max_perturbation': max_pert,
    }
    return x_adv, report


def _checked_inputs(x, y):
  """(x, y) as float32 images [N, H, W, C] in [0, 1] and int32 labels [N], or ValueError."""
  x = np.asarray(x, np.float32)
  y = np.asarray(y).astype(np.int32).reshape(-1)
  if x.ndim != 4 or len(x) != len(y):
    raise ValueError(f'expected images [N, H, W, C] and labels [N], got {x.shape}, {y.shape}')
  if x.size and (x.min() < 0.0 or x.max() > 1.0):
    raise ValueError(f'images must lie in [0, 1], got [{x.min()}, {x.max()}]')
  return x, y
