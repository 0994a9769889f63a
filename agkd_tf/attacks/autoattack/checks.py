"""AutoAttack's own sanity checks on the model under evaluation (Croce & Hein, ICML 2020).

The official `autoattack/checks.py` (fra31/auto-attack) flags evaluations that AutoAttack would
make unreliable: a randomised model (outputs differ over 5 passes), outputs that look like
probabilities instead of logits, points with an exactly zero gradient (checked at the random
start of the DLR-loss APGD runs), Square lowering the robust accuracy by more than 0.2 points
after the white-box attacks (a sign of gradient masking), and more target classes than the
model has. Each check returns its warnings as strings and logs them; none stops the evaluation.

Deviation: the official check for dynamic (test-time optimising) defences traces PyTorch autograd
calls; it has no TensorFlow equivalent (the official code skips it for TensorFlow models too).
"""

import logging

import tensorflow as tf

from agkd_tf.attacks.autoattack import common

DOC = 'See flags_doc.md of fra31/auto-attack for details.'


def _emit(messages, log):
  for m in messages:
    (log or logging.warning)(f'Warning: {m}')
  return messages


def check_randomized(model_fn, x, y, n=5, alpha=1e-4, log=None):
  """Flags a model whose outputs change over repeated passes on the same inputs.

  Args:
    model_fn: images -> logits.
    x: a batch of images.
    y: their labels.
    n: number of passes.
    alpha: tolerance on the L2 distance between L2-normalised outputs.
    log: callable for the warnings (logging.warning if None).

  Returns:
    A list of warning strings (empty if the model looks deterministic).
  """
  x = common.as_images(x)
  y = common.as_labels(y)
  outputs, n_correct = [], []
  for _ in range(n):
    out = tf.cast(model_fn(x), tf.float32)
    n_correct.append(int(tf.reduce_sum(tf.cast(
        tf.argmax(out, axis=-1, output_type=tf.int32) == y, tf.int32))))
    outputs.append(out / (tf.norm(out, axis=-1, keepdims=True) + 1e-10))
  max_diff = 0.0
  for i in range(n - 1):
    for j in range(i + 1, n):
      max_diff = max(max_diff, float(tf.reduce_max(tf.norm(outputs[i] - outputs[j], axis=-1))))
  if any(c != n_correct[-1] for c in n_correct) or max_diff > alpha:
    return _emit(['it seems to be a randomized defense (outputs differ over '
                  f'{n} passes, max distance {max_diff:.2e}); use version="rand". {DOC}'], log)
  return []


def check_range_output(model_fn, x, alpha=1e-5, log=None):
  """Flags outputs that look like probabilities (in [0, 1], rows summing to 1), not logits.

  Returns:
    (warnings, number of classes).
  """
  out = tf.cast(model_fn(common.as_images(x)), tf.float32)
  looks_like_probs = (float(tf.reduce_max(out)) < 1.0 + alpha and
                      float(tf.reduce_min(out)) > -alpha and
                      bool(tf.reduce_all(tf.abs(tf.reduce_sum(out, axis=-1) - 1.0) < alpha)))
  warnings = []
  if looks_like_probs:
    warnings = _emit(['it seems that the output is a probability distribution, please be sure '
                      f'that the logits are used! {DOC}'], log)
  return warnings, int(out.shape[-1])


def check_zero_gradients(n_zero, log=None):
  """Flags points whose loss gradient is exactly zero (`n_zero` of them)."""
  if n_zero > 0:
    return _emit([f'there are {n_zero} points with zero gradient! This might lead to '
                  f'unreliable evaluation with gradient-based attacks. {DOC}'], log)
  return []


def count_zero_gradients(grad):
  """Number of examples whose gradient ([B, ...]) is zero everywhere."""
  grad = tf.convert_to_tensor(grad)
  l1 = tf.reduce_sum(tf.abs(tf.reshape(grad, [tf.shape(grad)[0], -1])), axis=1)
  return int(tf.reduce_sum(tf.cast(l1 == 0, tf.int32)))


def check_square_sr(robust_accuracy, alpha=0.002, log=None):
  """Flags Square lowering the robust accuracy by more than `alpha` below the other attacks.

  Args:
    robust_accuracy: {'clean': acc, attack name: robust accuracy after it, ...} (fractions).
    alpha: tolerance as a fraction (0.002 = 0.2 percentage points, the official value).
    log: callable for the warnings.

  Returns:
    A list of warning strings.
  """
  if 'square' in robust_accuracy and len(robust_accuracy) > 2:
    acc = min(v for k, v in robust_accuracy.items() if k != 'square')
    if robust_accuracy['square'] < acc - alpha:
      return _emit([f'Square Attack has decreased the robust accuracy of '
                    f'{acc - robust_accuracy["square"]:.2%}. This might indicate that the '
                    'robustness evaluation using AutoAttack is unreliable. Consider running '
                    'Square Attack with more iterations and restarts or an adaptive attack. '
                    f'{DOC}'], log)
  return []


def check_n_classes(n_cls, attacks_to_run, apgd_targets, fab_targets, log=None):
  """Flags attacks that need more classes than the model has."""
  msg = None
  if 'apgd-dlr' in attacks_to_run or 'apgd-t' in attacks_to_run:
    if n_cls <= 2:
      msg = f'with only {n_cls} classes it is not possible to use the DLR loss!'
    elif n_cls == 3:
      msg = f'with only {n_cls} classes it is not possible to use the targeted DLR loss!'
    elif 'apgd-t' in attacks_to_run and apgd_targets + 1 > n_cls:
      msg = (f'it seems that more target classes ({apgd_targets}) than possible '
             f'({n_cls - 1}) are used in APGD-T!')
  if 'fab-t' in attacks_to_run and fab_targets + 1 > n_cls:
    extra = (f'too many target classes ({fab_targets}) are used in FAB-T ({n_cls - 1} '
             'possible)!')
    msg = f'it seems that {extra}' if msg is None else f'{msg} Also, {extra}'
  return _emit([msg], log) if msg else []
