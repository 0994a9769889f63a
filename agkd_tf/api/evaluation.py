"""`evaluate_model`: the evaluator of `python -m agkd_tf.evaluate` on an in-memory Keras model.

It runs `evaluation.assess`, the binary's own runner: the same compiled attacks, the same
integrity check of every adversarial batch (||x_adv - x||_inf <= eps, x_adv in [0, 1], finite),
AutoAttack (Croce & Hein, ICML 2020) beside the white-box attacks, and the same gradient-masking
diagnostics, so a defence that only looks robust is flagged here as it is by the binary.
"""

import keras
import numpy as np
import tensorflow as tf

from agkd_tf.core import errors
from agkd_tf.evaluation import report as eval_report
from agkd_tf import evaluation
from agkd_tf.api import network as network_lib


class Report(dict):
  """The evaluator's report (eval.json's content) with `to_markdown()` (eval.md's)."""

  def to_markdown(self):
    return eval_report.markdown(self)


def _loaded_model(model, name):
  """The evaluator's view of a Keras model: float32 logits in inference mode."""
  if not isinstance(model, keras.Model):
    raise ValueError(f'evaluate_model() takes a keras.Model, not {type(model).__name__}')
  returns_dict = network_lib.is_network(model)

  def logits_fn(x):
    out = model(x, training=False)
    return tf.cast(out['logits'] if returns_dict else out, tf.float32)

  def embedding_fn(x):
    return tf.cast(model(x, training=False)['embedding'], tf.float32)

  return evaluation.LoadedModel(name=name or model.name, logits_fn=logits_fn, input_shape=(),
                                  num_classes=0,
                                  embedding_fn=embedding_fn if returns_dict else None)


def _check_data(images, labels, num_classes):
  images, labels = np.asarray(images), np.asarray(labels)
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(f'images must be [N, height, width, 1 or 3], got {list(images.shape)}')
  if labels.shape != (len(images),):
    raise ValueError(f'labels must be [N] = [{len(images)}] class indices, got '
                     f'{list(labels.shape)}')
  if images.dtype != np.uint8 and (not np.isfinite(images).all() or images.min() < 0 or
                                   images.max() > 1):
    raise ValueError('float images must lie in [0, 1] (or pass uint8 images in 0..255)')
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(f'labels must lie in [0, {num_classes}), the model\'s classes')
  return images, labels.astype(np.int32)


def evaluate_model(model, images, labels, attacks=('clean', 'pgd20', 'cw20', 'aa'), eps=8 / 255,
                   batch_size=256, seed=0, aa_examples=0, aa_version='standard',
                   masking_checks=True, name=None, verbose=0):
  """Attacks a Keras model and checks the result, as `python -m agkd_tf.evaluate` does.

  Args:
    model: a `keras.Model` mapping [0, 1] NHWC images to logits (or a wrapped network).
    images: [N, H, W, C] uint8 in 0..255 or float32 in [0, 1], in the order to evaluate.
    labels: [N] class indices.
    attacks: names as `--attacks`: 'clean', 'fgsm', 'bim<n>', 'pgd<n>', 'cw<n>', 'mim<n>', 'aa'.
    eps: the L-inf budget in pixel units, in (0, 0.5].
    batch_size: images per attack batch.
    seed: seed of the attacks' random starts and of AutoAttack.
    aa_examples: run AutoAttack on the first this many images only (0: all).
    aa_version: AutoAttack's version: 'standard', 'plus' or 'rand'.
    masking_checks: also run PGD-20 restarts, the eps sweep and the large-eps check, and flag
      numbers that look masked (needs 'pgd20' among the attacks).
    name: the model's name in the report (default: `model.name`).
    verbose: 1 prints progress bars and each figure, as the binary does.

  Returns:
    A `Report` (a dict, as eval.json): 'accuracy' {attack: %}, 'seconds', 'max_perturbation',
    'masking_flags' (sentences; empty when nothing looks masked), AutoAttack's components
    under 'aa', and `to_markdown()`.

  Raises:
    ValueError: bad model, images, labels, attack name or eps.
    evaluation.IntegrityError: an attack broke the threat model.
  """
  if not isinstance(eps, (int, float)) or not 0 < eps <= 0.5:
    raise ValueError(f'eps={eps} must lie in (0, 0.5] in pixel units (8/255 = 0.0314)')
  loaded = _loaded_model(model, name)
  images = np.asarray(images)
  if images.ndim != 4:
    raise ValueError(f'images must be [N, height, width, 1 or 3], got {list(images.shape)}')
  with errors.as_value_error():
    num_classes = evaluation.check_logits(loaded.logits_fn, images.shape[1:],
                                            f'the output of {loaded.name}')
  images, labels = _check_data(images, labels, num_classes)
  config = evaluation.EvalConfig(attacks=tuple(attacks), eps=float(eps),
                                   num_examples=len(labels), aa_examples=aa_examples,
                                   aa_version=aa_version, batch_size=batch_size, seed=seed,
                                   masking_checks=masking_checks, verbose=verbose)
  with errors.as_value_error():
    evaluation.check_config(config)
    result, _, _ = evaluation.assess(loaded, images, labels, config, dataset='in-memory images')
  return Report(result)
