"""Decoding image files into one uint8 array, with errors that name the bad file.

Used by the `folder:PATH` and `tiny_imagenet` loaders. Decoding runs as a parallel tf.data map
(JPEG and PNG decoders in C++), which decodes CIFAR-10's 55,000 JPEGs in seconds. tf.data reports
a corrupt file without its name, so on failure we re-decode the files one by one to find it.

JPEGs are decoded with libjpeg's accurate integer DCT (`dct_method='INTEGER_ACCURATE'`), the
method PIL uses, so a file gives the same pixels here as in torchvision, the official AGKD-BML code
and the official AutoAttack loaders. TensorFlow's default picks a faster DCT whose output differs
by a few levels on most CIFAR-10 JPEGs, which is enough to change a clean prediction.
"""

import os

import numpy as np
import tensorflow as tf

from agkd_tf.core.errors import UserError

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png')


def list_images(directory):
  """Sorted image files (JPEG or PNG) directly inside `directory`."""
  return sorted(
      os.path.join(directory, f) for f in os.listdir(directory)
      if f.lower().endswith(IMAGE_EXTENSIONS))


def _decode(path):
  data = tf.io.read_file(path)
  # channels=3 turns grayscale files into RGB, so one odd file cannot change the tensor layout.
  # The content, not the extension, picks the decoder, as PIL does; tf.io.decode_image cannot
  # be used because it offers no choice of DCT method.
  return tf.cond(
      tf.io.is_jpeg(data),
      lambda: tf.io.decode_jpeg(data, channels=3, dct_method='INTEGER_ACCURATE'),
      lambda: tf.io.decode_png(data, channels=3))


def _find_bad_file(paths):
  for path in paths:
    try:
      image = _decode(tf.constant(path))
    except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError, tf.errors.UnknownError) as e:
      reason = ' '.join(str(e.message).split())[:120]
      return path, f'cannot be decoded as JPEG or PNG ({reason})'
    del image
  return None, None


def decode_images(paths):
  """Decodes all `paths` into a [N, H, W, 3] uint8 array.

  Args:
    paths: image file paths; all images must have the same height and width.

  Returns:
    The stacked images.

  Raises:
    UserError: a file is missing, corrupt or has a different size from the first.
  """
  paths = list(paths)
  if not paths:
    raise UserError('no image files to decode')
  ds = tf.data.Dataset.from_tensor_slices(paths).map(
      _decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  first_shape = None
  out = None
  try:
    for i, image in enumerate(ds.prefetch(64)):
      if first_shape is None:
        first_shape = tuple(image.shape)
        out = np.empty((len(paths),) + first_shape, np.uint8)
      elif tuple(image.shape) != first_shape:
        raise UserError(
            f'{paths[i]}: image is {image.shape[1]}x{image.shape[0]} but the images before it '
            f'are {first_shape[1]}x{first_shape[0]}; all images of a dataset must share one size')
      out[i] = image.numpy()
  except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError, tf.errors.UnknownError):
    bad, why = _find_bad_file(paths)
    if bad is None:
      raise
    raise UserError(f'{bad}: {why}') from None
  return out
