"""Loading a model to evaluate: a training run of ours or any SavedModel that returns logits."""

import os

import numpy as np
import tensorflow as tf

from agkd_tf import io_utils
from agkd_tf import run_dir
from agkd_tf.core.errors import UserError
from agkd_tf.evaluation.runner import LoadedModel
from agkd_tf.evaluation.runner import network_model


def load_model(model_dir=None, saved_model=None):
  """Loads a training run of ours or any SavedModel mapping [0, 1] NHWC images to logits.

  Raises:
    UserError: neither or both given, unreadable, wrong input layout, or probability outputs.
  """
  if bool(model_dir) == bool(saved_model):
    raise UserError('give exactly one of --model_dir (a run of ours) or --saved_model')
  if model_dir:
    network, spec = run_dir.load_network(model_dir)
    step = 0
    result_path = os.path.join(model_dir, 'result.json')
    if os.path.isfile(result_path):
      step = int(io_utils.read_json(result_path).get('steps', 0))
    return network_model(network, spec['num_classes'],
                         name=os.path.basename(os.path.normpath(model_dir)),
                         input_shape=spec['input_shape'], dataset=spec.get('dataset'), step=step)
  return _load_saved_model(saved_model)


def _load_saved_model(path):
  if not os.path.isfile(os.path.join(path, 'saved_model.pb')):
    raise UserError(f'{path} is not a SavedModel directory (no saved_model.pb)')
  try:
    loaded = tf.saved_model.load(path)
  except Exception as e:  # pylint: disable=broad-except
    raise UserError(f'{path}: the SavedModel cannot be loaded ({type(e).__name__})') from None
  signature = getattr(loaded, 'signatures', {}).get('serving_default')
  if signature is None:
    raise UserError(f'{path} has no serving_default signature')
  inputs = signature.structured_input_signature[1]
  if len(inputs) != 1:
    raise UserError(f'{path}: serving_default must take one image tensor, takes '
                    f'{sorted(inputs)}')
  input_name, spec = next(iter(inputs.items()))
  shape = spec.shape
  if shape.rank != 4 or shape[-1] not in (1, 3) or spec.dtype != tf.float32:
    raise UserError(f'{path}: serving_default must take float32 NHWC images, takes '
                    f'{spec.dtype.name} {shape}')
  outputs = signature.structured_outputs
  out_name = 'logits' if 'logits' in outputs else (next(iter(outputs)) if len(outputs) == 1
                                                     else None)
  if out_name is None:
    raise UserError(f'{path}: serving_default must return "logits" (or a single output), returns '
                    f'{sorted(outputs)}')

  def logits_fn(x):
    return tf.cast(signature(**{input_name: x})[out_name], tf.float32)

  h, w, c = shape[1], shape[2], shape[3]
  num_classes = check_logits(logits_fn, (h, w, c), f'{path}: "{out_name}"')
  return LoadedModel(name=os.path.basename(os.path.normpath(path)), logits_fn=logits_fn,
                     input_shape=(h, w, c), num_classes=num_classes, owner=loaded)


def check_logits(logits_fn, input_shape, what):
  """Probes `logits_fn` on random images; returns K, or raises UserError for non-logits."""
  h, w, c = (d or 32 for d in input_shape)
  probe = tf.random.stateless_uniform([4, h, w, c], [0, 1])
  out = np.asarray(logits_fn(probe))
  if out.ndim != 2:
    raise UserError(f'{what} must be [batch, classes], got {list(out.shape)}')
  if out.min() >= 0 and out.max() <= 1 and np.allclose(out.sum(1), 1, atol=1e-3):
    raise UserError(f'{what} looks like probabilities (rows sum to 1); attacks and defences '
                    'need logits, or their losses are wrong: drop the final softmax')
  return int(out.shape[1])
