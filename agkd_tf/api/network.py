"""`wrap`: any Keras 3 image classifier in the network form the defences need.

Every defence of the package trains a network that maps [0, 1] NHWC images to a dict with
`logits` [B, K], `embedding` [B, D] (the vector the metric losses compare: AGKD-BML's BML, SML's
triplet, Feature Scattering's transport cost) and `feature_map` [B, h, w, C] (the activation
AGKD-BML's attention distillation reads, Wang et al., ICCV 2021). The zoo's networks return that
dict already; `wrap` gives it to a user's own model without copying a weight:

- Functional and Sequential models: a new functional `keras.Model` over the same layers, whose
  outputs are the model's logits and two of its intermediate tensors. Training it trains the
  user's model in place, and `model.export(...)` of the user's model serves the result.
- Subclassed models (no layer graph to read): a `keras.Model` that calls the user's model and
  records the two activations as the chosen layers produce them ("taps" on those layers' `call`).
  Recording happens while the call is traced, so a compiled step reads them like any tensor.

Defaults follow what the zoo's networks expose: the feature map is the last 4-D activation and
the embedding is the input of the last Dense layer (the global-average-pooled features of a
standard classifier head).
"""

import functools
import threading

import keras
import tensorflow as tf

from agkd_tf.core import errors
from agkd_tf import evaluation

OUTPUT_KEYS = ('logits', 'embedding', 'feature_map')


def is_network(model):
  """Whether `model` already returns the dict of `OUTPUT_KEYS` (a zoo or wrapped network)."""
  if isinstance(model, _TappedNetwork):
    return True
  outputs = _graph_outputs(model)
  return isinstance(outputs, dict) and set(OUTPUT_KEYS) <= set(outputs)


def _graph_outputs(model):
  """The symbolic outputs of a functional/Sequential model (a dict if it returns one), or None
  for a subclassed model, which has no layer graph."""
  try:
    outputs = model.outputs
  except (AttributeError, ValueError):
    return None
  if outputs is None:
    return None
  struct = getattr(model, '_outputs_struct', None)
  return struct if isinstance(struct, dict) else outputs


def image_shape(network):
  """(H, W, C) of a wrapped or zoo network's images (None where the model leaves it open)."""
  if isinstance(network, _TappedNetwork):
    return network.image_shape
  return tuple(network.inputs[0].shape[1:])


def num_classes(network):
  """K, the width of a wrapped or zoo network's logits."""
  h, w, c = (d or 32 for d in image_shape(network))
  return int(network(tf.zeros([1, h, w, c]), training=False)['logits'].shape[-1])


def is_subclassed(network):
  """Whether `network` is `wrap`'s form of a subclassed model (no layer graph to clone)."""
  return isinstance(network, _TappedNetwork)


def _sublayers(model):
  return list(model._flatten_layers(include_self=False))  # pylint: disable=protected-access


def _layer_list(model):
  names = [l.name for l in _sublayers(model)]
  shown = ', '.join(names[:12]) + (', ...' if len(names) > 12 else '')
  return shown or 'none'


def _check_image_shape(shape, what):
  if shape is None or len(shape) != 4 or shape[-1] not in (1, 3):
    raise ValueError(f'{what} must take a batch of images [batch, height, width, 1 or 3], not '
                     f'{None if shape is None else tuple(shape)}')


def _check_outputs(network, input_shape):
  """Probes a wrapped network: logits that are not probabilities, and the two activations."""
  with errors.as_value_error():
    evaluation.check_logits(lambda x: network(x, training=False)['logits'], input_shape[1:],
                              'the model\'s output')
  h, w, c = (d or 32 for d in input_shape[1:])
  out = network(tf.zeros([1, h, w, c]), training=False)
  for key, rank in (('embedding', 2), ('feature_map', 4)):
    if len(out[key].shape) != rank:
      raise ValueError(f'the {key} must be a rank-{rank} tensor, the chosen layer gives rank '
                       f'{len(out[key].shape)}')


def wrap(model, feature_layer=None, embedding_layer=None, input_shape=None):
  """Turns a Keras 3 model that maps [0, 1] images to logits into a defence's network.

  Args:
    model: a `keras.Model` (functional, Sequential or subclassed) taking float32 NHWC images in
      [0, 1] and returning logits [batch, classes] (not probabilities). A network that already
      returns {'logits', 'embedding', 'feature_map'} (the zoo's) is returned as it is.
    feature_layer: name of the layer whose output is the feature map for attention
      (default: the last layer with a 4-D output).
    embedding_layer: name of the layer whose output is the embedding for the metric losses
      (default: the input of the last Dense layer).
    input_shape: (height, width, channels), needed only for a subclassed model that has not been
      called yet.

  Returns:
    A `keras.Model` returning {'logits', 'embedding', 'feature_map'} that shares the weights of
    `model`: training it trains `model`.

  Raises:
    ValueError: not a Keras model, not an image model, a named layer that does not exist, or
      probability outputs.
  """
  if not isinstance(model, keras.Model):
    raise ValueError(f'wrap() takes a keras.Model, not {type(model).__name__}')
  if is_network(model) and feature_layer is None and embedding_layer is None:
    return model
  outputs = _graph_outputs(model)
  if outputs is not None:
    network = _wrap_functional(model, outputs, feature_layer, embedding_layer)
    shape = tuple(model.inputs[0].shape)
  else:
    shape = _subclassed_input_shape(model, input_shape)
    network = _TappedNetwork(model, shape, feature_layer, embedding_layer)
  _check_outputs(network, shape)
  return network


def _named_layer(model, name, what):
  for layer in _sublayers(model):
    if layer.name == name:
      return layer
  raise ValueError(f'{model.name} has no layer "{name}" for the {what}; its layers: '
                   f'{_layer_list(model)}')


def _wrap_functional(model, outputs, feature_layer, embedding_layer):
  if len(model.inputs) != 1:
    raise ValueError(f'{model.name} takes {len(model.inputs)} inputs; wrap() needs one image input')
  _check_image_shape(model.inputs[0].shape, model.name)
  outputs = list(outputs.values()) if isinstance(outputs, dict) else list(outputs)
  if len(outputs) != 1:
    raise ValueError(f'{model.name} returns {len(outputs)} outputs; wrap() needs one: the logits')
  layers = [l for l in model.layers if not isinstance(l, keras.layers.InputLayer)]
  if feature_layer is not None:
    feature = _named_layer(model, feature_layer, 'feature map').output
  else:
    four_d = [l for l in layers if len(l.output.shape) == 4]
    if not four_d:
      raise ValueError(f'{model.name} has no 4-D activation to use as the feature map')
    feature = four_d[-1].output
  if embedding_layer is not None:
    embedding = _named_layer(model, embedding_layer, 'embedding').output
  else:
    dense = [l for l in layers if isinstance(l, keras.layers.Dense)]
    if not dense:
      raise ValueError(f'{model.name} has no Dense layer; name the embedding with '
                       'embedding_layer=...')
    embedding = dense[-1].input
  return keras.Model(model.inputs, {'logits': outputs[0], 'embedding': embedding,
                                    'feature_map': feature}, name=f'{model.name}_network')


def _subclassed_input_shape(model, input_shape):
  if input_shape is not None:
    shape = (None,) + tuple(input_shape)
  else:
    shapes = getattr(model, '_build_shapes_dict', None) or {}
    shape = next(iter(shapes.values()), None) if len(shapes) == 1 else None
    if shape is None:
      raise ValueError(f'{model.name} is a subclassed model that has not been called yet: pass '
                       'input_shape=(height, width, channels) to wrap()')
    shape = (None,) + tuple(shape)[1:]
  _check_image_shape(shape, model.name)
  return shape


class _TappedNetwork(keras.Model):
  """A subclassed model's logits plus the outputs (or inputs) of two of its layers.

  The chosen layers' `call` is replaced, on those instances only, by one that also records its
  result in thread-local storage (MirroredStrategy traces each replica in its own thread).
  """

  def __init__(self, model, input_shape, feature_layer, embedding_layer, **kwargs):
    super().__init__(name=f'{model.name}_network', **kwargs)
    self.model = model
    self.image_shape = tuple(input_shape[1:])
    self._taps = threading.local()
    if feature_layer is None or embedding_layer is None:
      feature_default, embedding_default = self._discover(input_shape)
    self._tap(_named_layer(model, feature_layer, 'feature map') if feature_layer
              else feature_default, 'feature_map', record_input=False)
    if embedding_layer:
      self._tap(_named_layer(model, embedding_layer, 'embedding'), 'embedding', False)
    else:
      self._tap(embedding_default, 'embedding', record_input=True)

  def _discover(self, input_shape):
    """The defaults, found by calling the model once with every layer recording its call."""
    seen = []
    layers = _sublayers(self.model)
    saved = [l.__dict__.get('call') for l in layers]
    for layer in layers:
      original = layer.call

      def recording(*args, _layer=layer, _call=original, **kwargs):
        out = _call(*args, **kwargs)
        seen.append((_layer, args[0] if args else None, out))
        return out
      object.__setattr__(layer, 'call', recording)
    try:
      h, w, c = (d or 32 for d in input_shape[1:])
      self.model(tf.zeros([1, h, w, c]), training=False)
    finally:
      for layer, old in zip(layers, saved):
        if old is None:
          layer.__dict__.pop('call', None)
        else:
          object.__setattr__(layer, 'call', old)
    four_d = [l for l, _, out in seen if hasattr(out, 'shape') and len(out.shape) == 4]
    dense = [l for l, _, _ in seen if isinstance(l, keras.layers.Dense)]
    if not four_d:
      raise ValueError(f'{self.model.name} has no 4-D activation to use as the feature map')
    if not dense:
      raise ValueError(f'{self.model.name} calls no Dense layer; name the embedding with '
                       'embedding_layer=...')
    return four_d[-1], dense[-1]

  def _tap(self, layer, key, record_input):
    original = layer.call
    taps = self._taps

    @functools.wraps(original)
    def tapped(*args, **kwargs):
      out = original(*args, **kwargs)
      if not hasattr(taps, 'values'):
        taps.values = {}
      taps.values[key] = args[0] if record_input else out
      return out
    object.__setattr__(layer, 'call', tapped)

  def call(self, images, training=False):
    self._taps.values = {}
    logits = self.model(images, training=training)
    values = self._taps.values
    missing = [k for k in ('embedding', 'feature_map') if k not in values]
    if missing:
      raise ValueError(f'{self.model.name}: the layer chosen for the {missing[0]} was not called')
    return {'logits': logits, 'embedding': values['embedding'],
            'feature_map': values['feature_map']}
