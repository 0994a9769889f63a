"""The model zoo, selected by `--model`.

Every model maps float32 NHWC images in [0, 1] to a dict with `logits` [B, K], `embedding`
[B, D] (the penultimate vector, global average pool of the feature map) and `feature_map`
[B, h, w, D] (the last conv block after its final BN + ReLU), as AGKD-BML's attention and metric
losses need. Per-channel normalisation is the model's first layer.
"""

import contextlib
import functools

import keras
import tensorflow as tf

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
  low = [layer for layer in layers
         if dtype == 'bfloat16' and isinstance(layer, keras.layers.BatchNormalization)]
  # A context inside another one on the same network finds its override in place: keep it.
  saved_calls = [vars(layer).get('call') for layer in low]
  try:
    for layer in layers:
      layer.dtype_policy = policy
    for layer, outer in zip(low, saved_calls):
      if outer is None:
        layer.call = _inference_fused_call(layer, layer.call)
    yield
  finally:
    for layer, outer in zip(low, saved_calls):
      if outer is None and 'call' in vars(layer):
        del layer.call  # The instance attribute; the class's call shows through again.
    for layer, old in zip(layers, saved):
      layer.dtype_policy = old


def _inference_fused_call(layer, original):
  """A BatchNormalization call that normalises a bfloat16 activation in one fused op.

  Keras's BatchNormalization casts a bfloat16 activation to float32, normalises it with
  element-wise ops and casts it back: on a CPU those casts and bfloat16 element-wise ops were much
  of what kept bfloat16 attacks from gaining more (bench/bf16_profile.py). In inference mode,
  which is how every attack calls the network, TensorFlow's FusedBatchNormV3 takes the bfloat16
  activation with float32 statistics, computes in float32 inside one kernel (oneDNN's on CPUs) and
  returns bfloat16. It needs an epsilon of at least 1.001e-5 and raises a smaller one to that
  (the zoo's 1e-5 moves by 1e-8). Training-mode calls, masks, other ranks and axes keep Keras's
  own call.
  """
  def call(inputs, training=None, mask=None):
    channels_last = layer.axis in (-1, len(inputs.shape) - 1)
    if training or mask is not None or len(inputs.shape) != 4 or not channels_last:
      return original(inputs, training=training, mask=mask)
    n = inputs.shape[-1]
    gamma = tf.cast(layer.gamma, tf.float32) if layer.scale else tf.ones([n], tf.float32)
    beta = tf.cast(layer.beta, tf.float32) if layer.center else tf.zeros([n], tf.float32)
    outputs, _, _ = tf.compat.v1.nn.fused_batch_norm(
        tf.cast(inputs, layer.compute_dtype), gamma, beta,
        mean=tf.cast(layer.moving_mean, tf.float32),
        variance=tf.cast(layer.moving_variance, tf.float32), epsilon=layer.epsilon,
        data_format='NHWC', is_training=False)
    return outputs
  return call


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
