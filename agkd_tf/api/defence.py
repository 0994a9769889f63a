"""`defend`: a defence of the package around a user's own network, as a `keras.Model`.

The returned model is the same `methods.Method` subclass the training binary builds (AGKD-BML,
Wang et al., ICCV 2021, and the defences it is compared with), with its own `train_step`; the user
compiles and fits it as any Keras model:

    defence = agkd_tf.defend(network, 'trades', eps=8 / 255)
    defence.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9))
    defence.fit(dataset, epochs=10, callbacks=[keras.callbacks.BackupAndRestore(dir)])

The hyper-parameters and their defaults are the binary's: `methods.hparams` holds every default
(the flags and `train_lib.TrainConfig` take theirs from it), and `train_lib.method_config` turns
a config into the method's own hyper-parameter dataclass, for the binary and for this function
alike.
"""

import dataclasses

import keras
import numpy as np

from agkd_tf import data as data_lib
from agkd_tf.core import errors
from agkd_tf import methods
from agkd_tf import train_lib
from agkd_tf.api import network as network_lib


def hparams_config(method, **hparams):
  """The binary's `TrainConfig` with `hparams` replacing its defaults (names checked).

  Raises:
    ValueError: an unknown method or hyper-parameter name, or a value out of range.
  """
  valid = set(train_lib.METHOD_HPARAMS) | {'seed'}
  unknown = sorted(set(hparams) - valid)
  if unknown:
    raise ValueError(f'unknown hyper-parameter {unknown[0]!r} for defend(); valid: '
                     f'{", ".join(sorted(valid))}')
  with errors.as_value_error():
    methods.validate_name(method)
    config = dataclasses.replace(train_lib.TrainConfig(model_dir=''), method=method, **hparams)
    train_lib.check_method_hparams(config)
  return config


def _frozen_copy(network):
  """A frozen copy of a functional network, for a teacher that is also the student."""
  if network_lib.is_network(network) and not network_lib.is_subclassed(network):
    copy = keras.models.clone_model(network)
    copy.set_weights(network.get_weights())
    copy.trainable = False
    return copy
  raise ValueError('the teacher is the network being trained, and a subclassed model cannot be '
                   'copied: pass teacher= a separate instance with the natural weights loaded')


def _shares_weights(a, b):
  ids = {id(v) for v in a.weights}
  return any(id(v) in ids for v in b.weights)


def defend(network, method='agkd_bml', teacher=None, train_images=None, flip=True, **hparams):
  """Builds a defence around `network`, ready to `compile` and `fit`.

  Args:
    network: the Keras model to make robust: any model `wrap` accepts (it is wrapped with the
      default layers), or a network `wrap` returned. It is trained in place.
    method: a defence name, as `--method`: agkd_bml, alp, at, bilateral, cat, feature_scatter,
      mart, natural, sml, trades.
    teacher: AGKD-BML's frozen, naturally trained teacher (a Keras model or wrapped network).
      The official recipe starts the student from the teacher's weights: pass the same model as
      `network` and `teacher`, and a frozen copy of it becomes the teacher.
    train_images: (images, labels) of the training set, for the methods that draw training images
      by class (AGKD-BML's backward examples, SML's positives) or keep per-example state (CAT,
      whose batches must then be (images, labels, indices) with indices into these images).
      Images are uint8 in 0..255 or float32 in [0, 1], [N, H, W, C].
    flip: whether horizontal flips are a valid augmentation (AGKD-BML's class-bank draws).
    **hparams: the method's hyper-parameters, named as the binary's flags (eps, step_size,
      attack_steps, label_smoothing, mart, mart_beta, attention, metric, metric_weight, margin,
      norm_weight, trades_beta, attack_dtype, cat_loss, agkd_loss, agkd_attack) with the same
      defaults, and `seed`.

  Returns:
    A `keras.Model` (the method) whose `fit` trains `network`; call `compile(optimizer=...)`
    first. Build it inside `strategy.scope()` to train under a tf.distribute strategy.

  Raises:
    ValueError: unknown names, values out of range, a missing teacher or training set.
  """
  config = hparams_config(method, **hparams)
  cls = methods.get(method)
  network = network_lib.wrap(network)
  num_classes = network_lib.num_classes(network)
  if cls.needs_teacher(config):
    if teacher is None:
      raise ValueError(f'method {method!r} needs teacher=: a naturally trained model')
    teacher = network_lib.wrap(teacher)  # A network `wrap` made is returned as it is.
    if _shares_weights(teacher, network):
      teacher = _frozen_copy(teacher)
  elif teacher is not None:
    raise ValueError(f'method {method!r} takes no teacher')
  bank, num_train = None, 0
  if train_images is not None:
    x, y = _check_train_images(train_images, num_classes)
    num_train = len(y)
  if cls.needs_class_bank(config) or cls.needs_indices:
    if train_images is None:
      raise ValueError(f'method {method!r} needs train_images=(images, labels) of the training '
                       'set')
    if cls.needs_class_bank(config):
      bank = data_lib.ClassBank(x, y, num_classes)
  with errors.as_value_error():
    defence = methods.build(method, network, num_classes,
                            train_lib.method_config(config), teacher=teacher,
                            class_bank=bank, seed=config.seed, flip=flip,
                            augment=config.augment, num_train=num_train)
  # Every variable exists already (the network is built); BackupAndRestore refuses to restore
  # into a model that Keras does not know to be built.
  defence.built = True
  return defence


def _check_train_images(train_images, num_classes):
  try:
    x, y = train_images
  except (TypeError, ValueError):
    raise ValueError('train_images must be a pair (images, labels)') from None
  x, y = np.asarray(x), np.asarray(y)
  if x.ndim != 4 or y.shape != (len(x),):
    raise ValueError(f'train_images must be images [N, H, W, C] and labels [N], got '
                     f'{list(x.shape)} and {list(y.shape)}')
  if y.size and (y.min() < 0 or y.max() >= num_classes):
    raise ValueError(f'train_images labels must lie in [0, {num_classes})')
  return x, y.astype(np.int32)
