"""Tests of the model zoo: output names and shapes, and the PyTorch-matching details."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from agkd_tf import models
from agkd_tf.core.errors import UserError

# (name, input side, feature map shape, trainable parameters of the PyTorch original or ours)
CASES = [
    ('cnn-cpu', 32, (8, 8, 128), None),
    ('wrn-16-4', 32, (8, 8, 256), None),
    ('wrn-28-10', 32, (8, 8, 640), 36479194),  # The official PyTorch WRN-28-10 on CIFAR-10.
    ('wrn-34-10', 32, (8, 8, 640), 46160474),  # The official PyTorch WRN-34-10 on CIFAR-10.
    ('preact-resnet18', 32, (4, 4, 512), None),
    ('resnet50', 64, (8, 8, 2048), None),
    ('vgg16', 32, (2, 2, 512), None),
]


@pytest.mark.parametrize('name,side,fmap,params', CASES)
def test_model_outputs(name, side, fmap, params):
  net = models.build(name, (side, side, 3), 10)
  out = net(np.random.RandomState(0).rand(2, side, side, 3).astype(np.float32), training=False)
  assert set(out) == {'logits', 'embedding', 'feature_map'}
  assert tuple(out['logits'].shape) == (2, 10)
  assert tuple(out['feature_map'].shape) == (2,) + fmap
  assert tuple(out['embedding'].shape) == (2, fmap[-1])
  # The embedding is the global average pool of the feature map.
  np.testing.assert_allclose(out['embedding'], np.mean(out['feature_map'], axis=(1, 2)),
                             rtol=1e-5, atol=1e-6)
  if params is not None:
    # Trainable parameters, less our two normalisation vectors (not trainable anyway).
    trainable = sum(int(np.prod(v.shape)) for v in net.trainable_variables)
    assert trainable == params


def test_batchnorm_matches_pytorch_defaults():
  net = models.build('wrn-16-4', (32, 32, 3), 10)
  bns = [l for l in net.layers if isinstance(l, keras.layers.BatchNormalization)]
  assert bns and all(l.momentum == 0.9 and l.epsilon == 1e-5 for l in bns)
  convs = [l for l in net.layers if isinstance(l, keras.layers.Conv2D)]
  assert all(not l.use_bias for l in convs)


def test_stride_two_convolutions_pad_symmetrically():
  net = models.build('wrn-16-4', (32, 32, 3), 10)
  strided = [l for l in net.layers if isinstance(l, keras.layers.Conv2D) and l.strides == (2, 2)
             and l.kernel_size == (3, 3)]
  assert strided and all(l.padding == 'valid' for l in strided)


def test_normalisation_is_inside_the_model():
  mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
  net = models.build('cnn-cpu', (8, 8, 3), 3, mean, std)
  layer = net.get_layer('normalize')
  x = np.random.RandomState(1).rand(1, 8, 8, 3).astype(np.float32)
  np.testing.assert_allclose(layer(x), (x - np.array(mean)) / np.array(std), rtol=1e-5)
  assert not layer.trainable_weights


def test_sync_bn_flag():
  net = models.build('cnn-cpu', (8, 8, 3), 3, sync_bn=True)
  bns = [l for l in net.layers if isinstance(l, keras.layers.BatchNormalization)]
  assert all(l.synchronized for l in bns)


def test_unknown_model_lists_valid_names():
  with pytest.raises(UserError, match='unknown model "resnet9".*wrn-28-10'):
    models.build('resnet9', (32, 32, 3), 10)


def test_initial_weights_differ_per_layer_and_follow_the_seed():
  def build(seed):
    keras.utils.set_random_seed(seed)
    return models.build('wrn-16-4', (8, 8, 3), 10)
  a, b, c = build(1), build(1), build(2)
  kernels = [w.numpy() for w in a.weights if 'kernel' in w.path]
  same_shape = [(i, j) for i in range(len(kernels)) for j in range(i + 1, len(kernels))
                if kernels[i].shape == kernels[j].shape]
  assert same_shape, 'wrn-16-4 has same-shaped conv layers'
  for i, j in same_shape:
    assert not np.array_equal(kernels[i], kernels[j])
  for wa, wb, wc in zip(a.weights, b.weights, c.weights):
    np.testing.assert_array_equal(wa.numpy(), wb.numpy())
  assert any(not np.array_equal(wa.numpy(), wc.numpy()) for wa, wc in zip(a.weights, c.weights))



def _conv_dtypes(fn, *args):
  """The dtypes of every Conv2D in fn's graph, including loop bodies (library functions)."""
  graph_def = fn.get_concrete_function(*args).graph.as_graph_def()
  nodes = list(graph_def.node)
  for function in graph_def.library.function:
    nodes += list(function.node_def)
  return {tf.dtypes.as_dtype(n.attr['T'].type) for n in nodes if n.op == 'Conv2D'}


def _policies(net):
  layers = net._flatten_layers()  # pylint: disable=protected-access
  return {layer.dtype_policy.name for layer in layers}


def test_compute_dtype_switches_the_traced_call_and_restores_the_policies():
  net = models.build('cnn-cpu', (32, 32, 3), 10)
  x = tf.random.stateless_uniform((4, 32, 32, 3), (0, 1))
  ref = net(x, training=False)['logits']

  @tf.function
  def bf16_call(v):
    with models.compute_dtype(net, 'bfloat16'):
      return net(v, training=False)['logits']

  assert _conv_dtypes(bf16_call, x) == {tf.bfloat16}
  scale = float(tf.reduce_max(tf.abs(ref)))
  np.testing.assert_allclose(tf.cast(bf16_call(x), tf.float32), ref, atol=0.05 * scale)
  assert _policies(net) == {'float32'}
  assert _conv_dtypes(tf.function(lambda v: net(v, training=False)['logits']), x) == {tf.float32}
  with pytest.raises(RuntimeError):
    with models.compute_dtype(net, 'bfloat16'):
      raise RuntimeError('restored even on an exception')
  assert _policies(net) == {'float32'}


def test_bfloat16_inference_batchnorm_is_one_fused_op_without_float32_round_trips():
  net = models.build('cnn-cpu', (32, 32, 3), 10)
  rng = np.random.RandomState(0)
  layers = net._flatten_layers()  # pylint: disable=protected-access
  bns = [l for l in layers if isinstance(l, keras.layers.BatchNormalization)]
  assert bns
  for bn in bns:  # Statistics far from the identity, so that a wrong fold shows.
    n = bn.moving_mean.shape[0]
    bn.moving_mean.assign(rng.normal(0, 0.5, n))
    bn.moving_variance.assign(rng.uniform(0.2, 3.0, n))
    bn.gamma.assign(rng.uniform(0.5, 1.5, n))
    bn.beta.assign(rng.normal(0, 0.3, n))
  x = tf.random.stateless_uniform((8, 32, 32, 3), (0, 3))
  ref = net(x, training=False)['logits']

  @tf.function
  def bf16_call(v, training):
    with models.compute_dtype(net, 'bfloat16'):
      return net(v, training=training)['logits']

  graph = bf16_call.get_concrete_function(x, False).graph.as_graph_def()
  nodes = list(graph.node) + [n for f in graph.library.function for n in f.node_def]
  fused = [n for n in nodes if n.op == 'FusedBatchNormV3']
  assert len(fused) == len(bns)
  assert {tf.dtypes.as_dtype(n.attr['T'].type) for n in fused} == {tf.bfloat16}
  # No activation goes back to float32 between the convolutions.
  to_f32 = [n for n in nodes if n.op == 'Cast'
            and n.attr['SrcT'].type == tf.bfloat16.as_datatype_enum
            and n.attr['DstT'].type == tf.float32.as_datatype_enum]
  assert len(to_f32) <= 1, [n.name for n in to_f32]
  scale = float(tf.reduce_max(tf.abs(ref)))
  np.testing.assert_allclose(tf.cast(bf16_call(x, False), tf.float32), ref, atol=0.05 * scale)
  # Training mode keeps Keras's own call: batch statistics, not the moving ones.
  train_ref = net(x, training=True)['logits']
  np.testing.assert_allclose(tf.cast(bf16_call(x, True), tf.float32), train_ref,
                             atol=0.05 * float(tf.reduce_max(tf.abs(train_ref))))
  assert all('call' not in vars(bn) for bn in bns)
  # Nested on the same network: the inner exit leaves the outer override in place.
  with models.compute_dtype(net, 'bfloat16'):
    outer = vars(bns[0])['call']
    with models.compute_dtype(net, 'bfloat16'):
      pass
    assert vars(bns[0])['call'] is outer
  assert all('call' not in vars(bn) for bn in bns)


@pytest.mark.parametrize('attack_dtype', [None, 'bfloat16'])
def test_attack_dtype_reaches_the_training_attack_only(attack_dtype):
  from agkd_tf import methods  # pylint: disable=g-import-not-at-top
  net = models.build('cnn-cpu', (32, 32, 3), 10)
  method = methods.build('at', net, 10, methods.MethodConfig(
      label_smoothing=0.0, eps=8 / 255, step_size=2 / 255, attack_steps=2,
      attack_dtype=attack_dtype))
  x = tf.random.stateless_uniform((4, 32, 32, 3), (0, 2))
  y = tf.constant([0, 1, 2, 3])
  attack = tf.function(method.adversarial)
  attack_dtype = tf.bfloat16 if attack_dtype else tf.float32
  assert _conv_dtypes(attack, x, y) == {attack_dtype}
  x_adv = attack(x, y)
  assert x_adv.dtype == tf.float32
  assert float(tf.reduce_max(tf.abs(x_adv - x))) <= 8 / 255 + 1e-6
  # The whole loss holds the attack's convolutions and the weight update's own float32 pass.
  loss = tf.function(lambda a, b: method.compute_losses(a, b)[0]['loss'])
  assert _conv_dtypes(loss, x, y) == {attack_dtype, tf.float32}
