"""The attack runner: attacks batch by batch on fixed images, every batch checked.

Integrity, on every adversarial batch: ||x_adv - x||_inf <= eps + 1e-6, x_adv in [0, 1] and finite.
The model always runs in inference mode, and every attack is given the true labels (no label
leaking). A violation raises `IntegrityError`; it never becomes a silent number. The evaluator, the
Python API and a training run's held-out accuracy (`network_accuracy`) all count through it.
"""

import dataclasses
from typing import Optional

import keras
import numpy as np
import tensorflow as tf

from agkd_tf import attacks as attacks_lib
from agkd_tf.core.errors import UserError


class IntegrityError(RuntimeError):
  """An adversarial batch broke the threat model; the evaluation must not report it."""


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


def check_batch(x, x_adv, eps, name):
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
    self._predict = None

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
    """Per-example correctness on the clean images."""
    if self._predict is None:
      logits_fn = self.model.logits_fn
      self._predict = tf.function(
          lambda x: tf.argmax(logits_fn(x), axis=-1, output_type=tf.int32), reduce_retracing=True)
    bs = self.config.batch_size
    preds = [self._predict(tf.constant(self.x[i:i + bs])).numpy()
             for i in range(0, len(self.y), bs)]
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
      max_dev = max(max_dev, check_batch(x, x_adv, eps, name))
      correct.append(ok.numpy())
      if keep:
        advs.append(x_adv)
      bar.update(b + 1)
    correct = np.concatenate(correct)
    return (correct, np.concatenate(advs) if keep else None), max_dev




@dataclasses.dataclass(frozen=True)
class RunnerSettings:
  """What an `AttackRunner` reads of its config, for callers without an `EvalConfig`."""
  batch_size: int = 256
  eps: float = 8 / 255
  seed: int = 0
  attack_backend: str = 'native'
  verbose: int = 0


def network_model(network, num_classes, name='network', input_shape=None, **fields):
  """A zoo network (returning {'logits', 'embedding', ...}) as a `LoadedModel`, in BN eval.

  `fields` are further `LoadedModel` fields (a run's `dataset` and `step`).
  """
  return LoadedModel(
      name=name, input_shape=tuple(input_shape or network.input_shape[1:]),
      num_classes=int(num_classes), **fields,
      logits_fn=lambda x: tf.cast(network(x, training=False)['logits'], tf.float32),
      embedding_fn=lambda x: tf.cast(network(x, training=False)['embedding'], tf.float32))


def network_accuracy(runner, attack_steps=0, step_size=None):
  """Top-1 accuracy in [0, 1] of a runner's images, clean or under PGD-`attack_steps`.

  The accuracy a training run logs (`--eval_every`, result.json): the same compiled attack, seeds
  and integrity checks as the evaluator's PGD column.
  """
  if not attack_steps:
    return float(runner.clean_correct().mean())
  (correct, _), _ = runner.attack(f'pgd{attack_steps}', step_size=step_size)
  return float(correct.mean())
