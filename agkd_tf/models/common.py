"""Layers and initialisers shared by the model zoo, matched to the PyTorch originals.

- Convolutions use He-normal init on fan_out (PyTorch WRN's `normal_(0, sqrt(2 / n))` with
  n = k * k * out_channels) and no bias before BatchNorm.
- Dense layers use PyTorch's default `Linear` init, uniform(+-1/sqrt(fan_in)), with zero bias as
  the official WRN sets it.
- BatchNorm uses PyTorch's momentum 0.1 (Keras momentum 0.9) and epsilon 1e-5.
- Stride-2 convolutions pad explicitly by k // 2 on every side: Keras 'same' padding pads only
  bottom/right for even inputs, which shifts every feature map by half a pixel against PyTorch.
"""

import keras
from keras import layers
import tensorflow as tf


def conv_init():
  """He normal with fan_out, as the official PyTorch code (kaiming_normal_, mode='fan_out').

  A fresh initialiser per layer: an unseeded Keras 3 initialiser fixes its seed when it is
  constructed, so one shared instance would give every same-shaped layer the same weights. A
  fresh one draws its seed from Python's `random`, which `keras.utils.set_random_seed(--seed)`
  seeds, so the initial weights follow --seed in every process.
  """
  return keras.initializers.VarianceScaling(2.0, 'fan_out', 'untruncated_normal')


def dense_init():
  """PyTorch's default nn.Linear weight init (uniform, bound 1/sqrt(fan_in)); fresh per layer."""
  return keras.initializers.VarianceScaling(1.0 / 3.0, 'fan_in', 'uniform')


@keras.saving.register_keras_serializable('agkd_tf')
class PixelNormalization(layers.Layer):
  """(x - mean) / std with the statistics stored as non-trainable weights.

  Normalisation lives inside the model so every attack works on [0, 1] pixels (eps = 8/255), and
  the statistics travel with checkpoints and SavedModels.
  """

  def __init__(self, mean, std, **kwargs):
    super().__init__(**kwargs)
    self._init_mean = [float(v) for v in mean]
    self._init_std = [float(v) for v in std]

  def build(self, input_shape):
    c = len(self._init_mean)
    self.mean = self.add_weight(name='mean', shape=(c,), trainable=False,
                                initializer=keras.initializers.Constant(self._init_mean))
    self.std = self.add_weight(name='std', shape=(c,), trainable=False,
                               initializer=keras.initializers.Constant(self._init_std))

  def call(self, x):
    return (x - tf.cast(self.mean, x.dtype)) / tf.cast(self.std, x.dtype)

  def get_config(self):
    return {**super().get_config(), 'mean': self._init_mean, 'std': self._init_std}


class Builder:
  """Creates layers with the zoo's conventions (BN settings, init, sync BN)."""

  def __init__(self, sync_bn=False):
    self.sync_bn = sync_bn

  def bn(self, name=None):
    return layers.BatchNormalization(momentum=0.9, epsilon=1e-5, synchronized=self.sync_bn,
                                     name=name)

  def conv(self, x, filters, kernel=3, stride=1, name=None):
    if stride > 1 and kernel > 1:
      x = layers.ZeroPadding2D(kernel // 2)(x)
      padding = 'valid'
    else:
      padding = 'same'
    return layers.Conv2D(filters, kernel, strides=stride, padding=padding, use_bias=False,
                         kernel_initializer=conv_init(), name=name)(x)

  def bn_relu(self, x):
    return layers.ReLU()(self.bn()(x))


def finish(inputs, feature_map, num_classes, name):
  """Builds the {logits, embedding, feature_map} model from the last feature map.

  Args:
    inputs: the keras.Input.
    feature_map: the last conv block's output after its final BN + ReLU.
    num_classes: number of logits.
    name: model name.

  Returns:
    A functional keras.Model whose outputs are a dict with float32 `logits`, `embedding`
    (global average pool of the feature map) and `feature_map`.
  """
  # float32 outputs under mixed precision: losses, attention maps and metrics stay exact.
  feature_map = layers.Activation('linear', dtype='float32', name='feature_map')(feature_map)
  embedding = layers.GlobalAveragePooling2D(name='embedding')(feature_map)
  logits = layers.Dense(num_classes, kernel_initializer=dense_init(), bias_initializer='zeros',
                        dtype='float32', name='logits')(embedding)
  return keras.Model(inputs, {'logits': logits, 'embedding': embedding,
                              'feature_map': feature_map}, name=name)
