"""White-box L-inf attacks: pure functions shared by training and evaluation, and a registry.

The functions (`fgsm`, `bim`, `pgd`, `mim`) take (model_fn, x, y, eps, ...) where `model_fn` maps
[0, 1] NHWC float32 images to logits in inference mode. Each runs its loop inside the traced graph
and is meant to be called inside the caller's `tf.function` (never XLA unless the caller asks).

`get_attack(name)` turns the names of the paper's tables into callables
`attack(model_fn, x, y, eps, seed=None, dtype=tf.float32)`, with the defaults of AGKD-BML's
evaluation (docs/algorithms.md, "Attacks for evaluation"):

- 'fgsm': one step of size eps, no random start (Goodfellow et al., 2015).
- 'bim<n>': n steps of 2/255, no random start (Kurakin et al., 2017).
- 'pgd<n>': random start U(-eps, eps), n steps of 2/255 ascending CE (Madry et al., 2018).
- 'cw<n>': PGD with the CW-inf margin loss, confidence 50, random start, n steps of 2/255
  (the L-inf "CW" of Bilateral, FS and AGKD-BML, after Carlini & Wagner, 2017).
- 'mim<n>': momentum iterative method, decay 1.0, n steps of 2/255, no random start
  (Dong et al., 2018; see `mim.py` for the choice of step).

Example, on any Keras model that maps [0, 1] images to logits (tests/test_api.py runs it):

    import numpy as np
    import agkd_tf
    import keras
    import tensorflow as tf

    model = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Flatten(),
                              keras.layers.Dense(10)])
    x = tf.constant(np.random.default_rng(0).uniform(size=(8, 32, 32, 3)), tf.float32)
    y = tf.constant(np.arange(8) % 10, tf.int32)
    pgd20 = agkd_tf.attacks.get_attack('pgd20')
    x_adv = tf.function(pgd20)(lambda images: model(images, training=False), x, y, 8 / 255,
                               seed=tf.constant([0, 1]))
    assert float(tf.reduce_max(tf.abs(x_adv - x))) <= 8 / 255 + 1e-6
"""

import dataclasses
import re

import tensorflow as tf

from agkd_tf.attacks.bim import bim
from agkd_tf.attacks.fgsm import fgsm
from agkd_tf.attacks.mim import mim
from agkd_tf.attacks.pgd import DEFAULT_STEP_SIZE
from agkd_tf.attacks.pgd import MAX_UNROLLED_STEPS
from agkd_tf.attacks.pgd import attack_loss
from agkd_tf.attacks.pgd import cw_margin_loss
from agkd_tf.attacks.pgd import loss_gradient
from agkd_tf.attacks.pgd import most_confusing_labels
from agkd_tf.attacks.pgd import pgd
from agkd_tf.attacks.pgd import project
from agkd_tf.attacks.pgd import repeat
from agkd_tf.attacks.pgd import uniform_start
from agkd_tf.core.errors import UserError

__all__ = ['Attack', 'DEFAULT_STEP_SIZE', 'MAX_UNROLLED_STEPS', 'VALID_FORMS', 'attack_loss',
           'bim', 'cw_margin_loss', 'fgsm', 'get_attack', 'loss_gradient', 'mim',
           'most_confusing_labels', 'pgd', 'project', 'repeat', 'uniform_start']

_FAMILIES = {}


def _register(family, takes_steps=True):
  """Registers how a family of attacks runs; a family registered twice is a bug."""

  def decorator(run):
    if family in _FAMILIES:
      raise ValueError(f'Duplicate attack family: {family}')
    _FAMILIES[family] = (run, takes_steps)
    return run

  return decorator


@dataclasses.dataclass(frozen=True)
class Attack:
  """A configured attack from the registry, callable as attack(model_fn, x, y, eps, seed=None).

  Frozen and hashable, so that callers can key their compiled functions by it.

  Attributes:
    name: the registry name, e.g. 'pgd20'.
    family: 'fgsm', 'bim', 'pgd', 'cw' or 'mim'.
    steps: number of steps (1 for FGSM).
    step_size: the step in pixel units (None for FGSM, whose step is eps).
    random_start: whether it starts from x + U(-eps, eps).
    loss: 'ce' or 'cw'.
  """
  name: str
  family: str
  steps: int
  step_size: float | None
  random_start: bool
  loss: str

  def __call__(self, model_fn, x, y, eps, seed=None, dtype=tf.float32):
    """Runs the attack.

    Args:
      model_fn: images -> logits, in inference mode.
      x: [B, H, W, C] clean images in [0, 1].
      y: [B] true labels.
      eps: scalar or [B] per-example budget in pixel units.
      seed: optional int32 [2] stateless seed of the random start (ignored without one).
      dtype: the dtype the network is fed; the perturbation stays float32.

    Returns:
      [B, H, W, C] float32 adversarial images.
    """
    run, _ = _FAMILIES[self.family]
    return run(self, model_fn, x, y, eps, seed, dtype)


@_register('fgsm', takes_steps=False)
def _run_fgsm(config, model_fn, x, y, eps, seed, dtype):
  del seed  # Deterministic.
  return fgsm(model_fn, x, y, eps, loss=config.loss, dtype=dtype)


@_register('bim')
def _run_bim(config, model_fn, x, y, eps, seed, dtype):
  del seed  # Deterministic.
  return bim(model_fn, x, y, eps, config.step_size, config.steps, loss=config.loss, dtype=dtype)


@_register('pgd')
def _run_pgd(config, model_fn, x, y, eps, seed, dtype):
  return pgd(model_fn, x, y, eps, config.step_size, config.steps,
             random_start=config.random_start, loss=config.loss, seed=seed, dtype=dtype)


# CW differs from PGD only in its loss, which the registry sets.
_register('cw')(_run_pgd)


@_register('mim')
def _run_mim(config, model_fn, x, y, eps, seed, dtype):
  del seed  # Deterministic.
  return mim(model_fn, x, y, eps, config.step_size, config.steps, loss=config.loss, dtype=dtype)


VALID_FORMS = ', '.join(family if not takes_steps else f'{family}<n>'
                        for family, (_, takes_steps) in _FAMILIES.items())

_NAME = re.compile(r'([a-z]+)(\d*)')


def get_attack(name):
  """The attack of a table column, by name.

  Args:
    name: 'fgsm', or a family and a positive number of steps: 'bim10', 'pgd20', 'cw10', 'mim40'.

  Returns:
    An `Attack`, callable as attack(model_fn, x, y, eps, seed=None, dtype=tf.float32).

  Raises:
    UserError: on a name of no valid form.
  """
  match = _NAME.fullmatch(str(name).strip().lower())
  family, digits = match.groups() if match else (None, '')
  if family not in _FAMILIES or _FAMILIES[family][1] != bool(digits) or (
      digits and int(digits) < 1):
    raise UserError(f'unknown attack "{name}"; valid forms: {VALID_FORMS} '
                    '(n >= 1 steps, e.g. pgd20)')
  if not digits:
    return Attack(name=family, family=family, steps=1, step_size=None, random_start=False,
                  loss='ce')
  steps = int(digits)
  return Attack(name=f'{family}{steps}', family=family, steps=steps,
                step_size=DEFAULT_STEP_SIZE, random_start=family in ('pgd', 'cw'),
                loss='cw' if family == 'cw' else 'ce')
