"""The model zoo, selected by `--model`.

Every model maps float32 NHWC images in [0, 1] to a dict with `logits` [B, K], `embedding`
[B, D] (the penultimate vector, global average pool of the feature map) and `feature_map`
[B, h, w, D] (the last conv block after its final BN + ReLU), as AGKD-BML's attention and metric
losses need. Per-channel normalisation is the model's first layer.
"""

import contextlib
import functools

import keras

from agkd_tf.core.errors import UserError
from agkd_tf.models import cnn
from agkd_tf.models import common
from agkd_tf.models import resnet
from agkd_tf.models import vgg
from agkd_tf.models import wrn

_MODELS = {}


def register(name, fn):
  if name in _MODELS:
    raise ValueError(f'Duplicate model name: {name}')
  _MODELS[name] = fn


register('wrn-28-10', functools.partial(wrn.wide_resnet, depth=28, widen=10))
register('wrn-34-10', functools.partial(wrn.wide_resnet, depth=34, widen=10))
register('wrn-16-4', functools.partial(wrn.wide_resnet, depth=16, widen=4))
register('preact-resnet18', resnet.preact_resnet18)
register('resnet50', resnet.resnet50)
register('vgg16', vgg.vgg16)
register('cnn-cpu', cnn.cnn_cpu)


def names():
  return sorted(_MODELS)


@contextlib.contextmanager
def compute_dtype(network, dtype):
  """Calls of `network` inside this context compute in `dtype`; its variables stay as they are.

  Training-time attacks may run in bfloat16 while the weight update stays float32 (or the
  reverse). Keras 3 reads a layer's dtype policy when the layer is called, so switching every
  layer to `mixed_bfloat16` around a call inside a tf.function traces that call with bfloat16
  ops (variables cast on read) and leaves the rest of the graph as it was. Calls are traced one
  replica at a time, so the switch never leaks into another replica's pass.

  Args:
    network: a Keras model of the zoo.
    dtype: 'float32', 'bfloat16', or None to leave the network's own policy.

  Yields:
    Nothing; the policies are restored on exit, even on an exception.
  """
  if dtype is None:
    yield
    return
  policy = 'float32' if dtype == 'float32' else f'mixed_{dtype}'
  layers = list(network._flatten_layers(include_self=True))  # pylint: disable=protected-access
  saved = [layer.dtype_policy for layer in layers]
  try:
    for layer in layers:
      layer.dtype_policy = policy
    yield
  finally:
    for layer, old in zip(layers, saved):
      layer.dtype_policy = old


def validate_name(name):
  if name not in _MODELS:
    raise UserError(f'unknown model "{name}"; valid: {", ".join(names())}')


def build(name, input_shape, num_classes, mean=None, std=None, sync_bn=False):
  """Builds a model of the zoo.

  Args:
    name: a registered name, e.g. 'wrn-28-10' or 'cnn-cpu'.
    input_shape: (H, W, C) of the images.
    num_classes: number of classes.
    mean: per-channel mean of the training images in [0, 1] units (default 0).
    std: per-channel std (default 1).
    sync_bn: synchronise BatchNorm statistics across replicas.

  Returns:
    A functional keras.Model returning {'logits', 'embedding', 'feature_map'}.
  """
  validate_name(name)
  c = input_shape[-1]
  mean = [0.0] * c if mean is None else list(mean)
  std = [1.0] * c if std is None else list(std)
  inputs = keras.Input(tuple(input_shape), name='images')
  x = common.PixelNormalization(mean, std, name='normalize')(inputs)
  return _MODELS[name](inputs, x, num_classes, sync_bn=sync_bn)
