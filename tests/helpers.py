"""Small fixtures shared by the tests: tiny image folders, npz files and networks."""

import os

import keras
import numpy as np
from PIL import Image


def write_image_folder(root, classes=('cat', 'dog', 'frog'), per_class=(6, 3), size=8, seed=0,
                       fmt='png'):
  """Writes root/{train,test}/<class>/<i>.<fmt> with class-dependent colours."""
  rng = np.random.RandomState(seed)
  for part, n in zip(('train', 'test'), per_class):
    for c, name in enumerate(classes):
      d = os.path.join(root, part, name)
      os.makedirs(d, exist_ok=True)
      for i in range(n):
        base = np.full((size, size, 3), 40 + 70 * c, np.int32)
        img = np.clip(base + rng.randint(-20, 20, (size, size, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(os.path.join(d, f'{i:03d}.{fmt}'))
  return root


def dense_network(input_shape=(8, 8, 3), num_classes=3, seed=0):
  """A small network without BatchNorm, returning the zoo's output dict."""
  inputs = keras.Input(input_shape)
  fm = keras.layers.Conv2D(4, 3, padding='same', activation='relu',
                           kernel_initializer=keras.initializers.GlorotUniform(seed))(inputs)
  emb = keras.layers.GlobalAveragePooling2D()(fm)
  logits = keras.layers.Dense(num_classes,
                              kernel_initializer=keras.initializers.GlorotUniform(seed + 1))(emb)
  return keras.Model(inputs, {'logits': logits, 'embedding': emb, 'feature_map': fm})


def compile_with_sgd(method, network, lr):
  """Compiles a method with the package's SGD (momentum 0.9, wd 5e-4) and builds its slots.

  Call inside the strategy scope the method was built in.
  """
  from agkd_tf import optim  # pylint: disable=g-import-not-at-top
  opt = optim.TorchSGD(lr, 0.9, False, 5e-4)
  method.compile(optimizer=opt)
  opt.build(network.trainable_variables)
  return method


def fixed_batch(splits, n):
  """The first n training images (float32 in [0, 1]) and labels, as tensors."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return (tf.constant(splits.x_train[:n], tf.float32) / 255.0,
          tf.constant(splits.y_train[:n], tf.int32))
