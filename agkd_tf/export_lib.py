"""SavedModel export of a trained network.

The serving signature `serving_default` takes float32 NHWC images in [0, 1] (input name `images`)
and returns `logits` and `probabilities`. The network is rebuilt in float32 on the default device
from `model_spec.json`, its weights restored from the latest checkpoint, and the SavedModel is
written under a temporary name and renamed into place, so a crash never leaves a half export.
"""

import os
import shutil
import tempfile

import tensorflow as tf

from agkd_tf import io_utils
from agkd_tf import run_dir


class _Serving(tf.Module):
  """Wraps a zoo network with the serving signature."""

  def __init__(self, network, input_shape):
    super().__init__()
    self.network = network
    self.serve = tf.function(
        self._serve, input_signature=[tf.TensorSpec([None] + list(input_shape), tf.float32,
                                                    name='images')])

  def _serve(self, images):
    logits = tf.cast(self.network(images, training=False)['logits'], tf.float32)
    return {'logits': logits, 'probabilities': tf.nn.softmax(logits)}


def export_saved_model(network, input_shape, export_dir):
  """Writes `network` as a SavedModel at `export_dir`, atomically replacing any old export."""
  export_dir = os.path.abspath(export_dir)
  parent = os.path.dirname(export_dir)
  io_utils.make_writable_dir(parent, 'the export directory')
  tmp = tempfile.mkdtemp(prefix='.export-tmp-', dir=parent)
  try:
    module = _Serving(network, input_shape)
    tf.saved_model.save(module, tmp, signatures={'serving_default': module.serve})
    old = None
    if os.path.exists(export_dir):
      old = tempfile.mkdtemp(prefix='.export-old-', dir=parent)
      os.rmdir(old)
      os.rename(export_dir, old)
    os.rename(tmp, export_dir)
    if old:
      shutil.rmtree(old, ignore_errors=True)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return export_dir


def export_run(model_dir, export_dir=None, checkpoint=None):
  """Exports a run's latest checkpoint; returns the export directory."""
  network, spec = run_dir.load_network(model_dir, checkpoint)
  return export_saved_model(network, spec['input_shape'],
                            export_dir or os.path.join(model_dir, 'export'))
