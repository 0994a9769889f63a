"""The Python API on users' own Keras models: wrap, defend(...).fit, evaluate_model."""

import os
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

import agkd_tf
from agkd_tf import data as data_lib
from agkd_tf import io_utils
from agkd_tf import methods
from agkd_tf import models
from agkd_tf import optim
from agkd_tf import run_dir
from agkd_tf import train_lib
from agkd_tf.data import pipeline
from tests.conftest import run_binary

_RNG = np.random.RandomState(0)
_X = _RNG.randint(0, 256, (24, 8, 8, 3)).astype(np.uint8)
_Y = (np.arange(24) % 3).astype(np.int32)


def _functional(seed=0, num_classes=3):
  """A user's functional CNN (not from the zoo), with seeded initialisers."""
  init = keras.initializers.GlorotUniform
  inputs = keras.Input((8, 8, 3), name='pixels')
  x = keras.layers.Conv2D(6, 3, padding='same', kernel_initializer=init(seed), name='conv')(inputs)
  x = keras.layers.BatchNormalization(name='bn')(x)
  x = keras.layers.ReLU(name='relu')(x)
  x = keras.layers.GlobalAveragePooling2D(name='pool')(x)
  x = keras.layers.Dense(5, kernel_initializer=init(seed + 1), name='hidden')(x)
  logits = keras.layers.Dense(num_classes, kernel_initializer=init(seed + 2), name='head')(x)
  return keras.Model(inputs, logits, name='user_cnn')


class _Subclassed(keras.Model):
  """A user's subclassed CNN: no layer graph to read."""

  def __init__(self):
    super().__init__(name='user_sub')
    init = keras.initializers.GlorotUniform
    self.conv = keras.layers.Conv2D(4, 3, padding='same', activation='relu',
                                    kernel_initializer=init(0))
    self.pool = keras.layers.GlobalAveragePooling2D()
    self.head = keras.layers.Dense(3, kernel_initializer=init(1))

  def call(self, images, training=False):
    return self.head(self.pool(self.conv(images)))


def _one_line_value_error(fn, pattern):
  with pytest.raises(ValueError, match=pattern) as info:
    fn()
  assert '\n' not in str(info.value)


def test_wrap_functional_reads_default_and_named_layers():
  model = _functional()
  network = agkd_tf.wrap(model)
  x = tf.constant(_X[:4], tf.float32) / 255.0
  out = network(x, training=False)
  np.testing.assert_allclose(out['logits'], model(x, training=False), rtol=1e-6)
  # Defaults: the last 4-D activation and the input of the last Dense layer.
  inner = keras.Model(model.inputs, [model.get_layer('relu').output,
                                     model.get_layer('hidden').output])
  feature, hidden = inner(x, training=False)
  np.testing.assert_allclose(out['feature_map'], feature, rtol=1e-6)
  np.testing.assert_allclose(out['embedding'], hidden, rtol=1e-6)
  named = agkd_tf.wrap(model, feature_layer='conv', embedding_layer='pool')
  assert named(x)['feature_map'].shape == (4, 8, 8, 6)
  assert named(x)['embedding'].shape == (4, 6)
  # The weights are the model's own: no copy.
  assert {id(v) for v in network.weights} == {id(v) for v in model.weights}


def test_wrap_subclassed_taps_its_layers_in_a_compiled_call():
  model = _Subclassed()
  network = agkd_tf.wrap(model, input_shape=(8, 8, 3))
  x = tf.constant(_X[:4], tf.float32) / 255.0
  out = tf.function(lambda images: network(images, training=False))(x)
  np.testing.assert_allclose(out['logits'], model(x), rtol=1e-6)
  np.testing.assert_allclose(out['feature_map'], model.conv(x), rtol=1e-6)
  np.testing.assert_allclose(out['embedding'], model.pool(model.conv(x)), rtol=1e-6)
  assert len(network.trainable_variables) == len(model.trainable_variables) == 4


def test_wrap_rejects_bad_models_in_one_line():
  _one_line_value_error(lambda: agkd_tf.wrap(_functional(), feature_layer='nope'),
                        'has no layer "nope" for the feature map; its layers: .*conv')
  _one_line_value_error(lambda: agkd_tf.wrap(_Subclassed()), 'pass input_shape=')
  probs = _functional()
  probs = keras.Model(probs.inputs, keras.layers.Softmax()(probs.outputs[0]))
  _one_line_value_error(lambda: agkd_tf.wrap(probs), 'looks like probabilities')
  vectors = keras.Sequential([keras.Input((12,)), keras.layers.Dense(3)])
  _one_line_value_error(lambda: agkd_tf.wrap(vectors), 'must take a batch of images')
  _one_line_value_error(lambda: agkd_tf.wrap(lambda x: x), 'takes a keras.Model')


def _dataset(with_index=False):
  x = tf.constant(_X, tf.float32) / 255.0
  parts = (x, tf.constant(_Y)) + ((tf.range(len(_Y)),) if with_index else ())
  return tf.data.Dataset.from_tensor_slices(parts).batch(8)


class _Kill(keras.callbacks.Callback):
  """Stops a fit as a preemption would: mid-epoch, with an exception."""

  def __init__(self, epoch, batch):
    super().__init__()
    self.epoch, self.batch, self.current = epoch, batch, 0

  def on_epoch_begin(self, epoch, logs=None):
    self.current = epoch

  def on_train_batch_end(self, batch, logs=None):
    if self.current == self.epoch and batch == self.batch:
      raise KeyboardInterrupt('killed')


def _fit(method, callbacks=(), epochs=3):
  model = _functional()
  teacher = model if methods.get(method).needs_teacher(None) else None
  defence = agkd_tf.defend(model, method, teacher=teacher, train_images=(_X, _Y),
                           attack_steps=2, seed=1)
  defence.compile(optimizer=optim.TorchSGD(0.05, 0.9, False, 5e-4))
  history = defence.fit(_dataset(methods.get(method).needs_indices), epochs=epochs, verbose=0,
                        callbacks=list(callbacks))
  return model, defence, history


@pytest.mark.parametrize('method', methods.names())
def test_defend_fit_resumes_after_a_kill_to_the_same_weights(method, tmp_path):
  start = _functional().get_weights()
  model, _, history = _fit(method)
  assert np.isfinite(history.history['loss']).all()
  assert any(not np.array_equal(a, b) for a, b in zip(start, model.get_weights()))
  backup = str(tmp_path / 'backup')
  with pytest.raises(KeyboardInterrupt):
    _fit(method, [keras.callbacks.BackupAndRestore(backup), _Kill(epoch=1, batch=1)])
  resumed, defence, _ = _fit(method, [keras.callbacks.BackupAndRestore(backup)])
  for a, b in zip(model.get_weights(), resumed.get_weights()):
    np.testing.assert_array_equal(a, b)
  assert int(defence.optimizer.iterations.numpy()) == 9


def test_defend_fit_takes_the_standard_callbacks(tmp_path):
  model = _functional()
  defence = agkd_tf.defend(model, 'at', attack_steps=1)
  defence.compile(optimizer=keras.optimizers.SGD(0.01))
  stop = keras.callbacks.EarlyStopping(monitor='val_accuracy', patience=0, mode='max')
  best = str(tmp_path / 'best.weights.h5')
  callbacks = [stop, keras.callbacks.TensorBoard(str(tmp_path / 'logs')),
               keras.callbacks.ModelCheckpoint(best, monitor='val_accuracy', mode='max',
                                               save_best_only=True, save_weights_only=True)]
  history = defence.fit(_dataset(), validation_data=_dataset(), epochs=5, verbose=0,
                        callbacks=callbacks)
  logits = model(tf.constant(_X, tf.float32) / 255.0, training=False).numpy()
  assert history.history['val_accuracy'][-1] == pytest.approx((logits.argmax(1) == _Y).mean())
  assert set(history.history) >= {'val_loss', 'val_accuracy', 'adv_accuracy'}
  assert os.listdir(tmp_path / 'logs' / 'train') and os.listdir(tmp_path / 'logs' / 'validation')
  # The best epoch's weights load back into a fresh defence of the same network.
  fresh = agkd_tf.defend(_functional(seed=5), 'at', attack_steps=1)
  fresh.load_weights(best)
  assert any(not np.array_equal(a, b) for a, b in zip(_functional(seed=5).get_weights(),
                                                      fresh.network.get_weights()))


def test_defend_trains_under_mirrored_strategy():
  strategy = tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1'])
  with strategy.scope():
    model = _functional()
    defence = agkd_tf.defend(model, 'agkd_bml', teacher=model, train_images=(_X, _Y),
                             attack_steps=1)
    defence.compile(optimizer=keras.optimizers.SGD(0.01))
  before = model.get_weights()
  history = defence.fit(_dataset(), epochs=1, verbose=0)
  assert np.isfinite(history.history['loss']).all()
  assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))


def test_defend_rejects_bad_input_in_one_line():
  model = _functional()
  _one_line_value_error(lambda: agkd_tf.defend(model, 'magic'), 'unknown method "magic"')
  _one_line_value_error(lambda: agkd_tf.defend(model, 'at', epz=0.1),
                        "unknown hyper-parameter 'epz'")
  _one_line_value_error(lambda: agkd_tf.defend(model, 'at', eps=2.0), 'eps=2.0 must lie in')
  _one_line_value_error(lambda: agkd_tf.defend(model, 'agkd_bml'), 'needs teacher=')
  _one_line_value_error(lambda: agkd_tf.defend(model, 'agkd_bml', teacher=model),
                        'needs train_images=')
  _one_line_value_error(lambda: agkd_tf.defend(model, 'sml', train_images=(_X, _Y[:5])),
                        'labels \\[N\\]')
  _one_line_value_error(lambda: agkd_tf.defend(model, 'at', attention='gaze'),
                        'unknown attention "gaze"')


def test_defend_takes_the_binary_defaults():
  defence = agkd_tf.defend(_functional(), 'trades')
  defaults = train_lib.TrainConfig(model_dir='')
  assert defence.config.eps == defaults.eps and defence.config.trades_beta == defaults.trades_beta
  assert defence.config.attack_steps == defaults.attack_steps
  assert defence.config.label_smoothing == methods.get('trades').default_label_smoothing


def test_fit_and_the_training_binary_give_the_same_weights(tmp_path):
  config = train_lib.TrainConfig(
      model_dir=str(tmp_path / 'run'), dataset='synthetic:8', train_examples=64, test_examples=10,
      model='cnn-cpu', method='trades', attack_steps=2, epochs=1, batch_size=16, lr=0.05,
      lr_schedule='constant', eval_examples=10, eval_attack_steps=0, log_every_steps=0,
      verbose=0, seed=4, export=False, max_steps=3)
  splits = data_lib.load(config.dataset, None, config.train_examples, config.test_examples,
                         config.seed)
  train_lib.train(config, splits=splits)
  binary, _ = run_dir.load_network(config.model_dir)

  # The same network, seed, strategy and batches through the Python API. The strategy matters:
  # the method's random generator draws per replica under a strategy scope, and the binary
  # trains under OneDeviceStrategy on one CPU.
  keras.utils.set_random_seed(config.seed)
  mean, std = splits.channel_stats()
  with tf.distribute.OneDeviceStrategy('/cpu:0').scope():
    network = models.build('cnn-cpu', splits.image_shape, splits.num_classes, mean, std)
    defence = agkd_tf.defend(network, 'trades', attack_steps=2, seed=config.seed)
    defence.compile(optimizer=optim.TorchSGD(optim.EpochSchedule(
        config.lr, 4, 'constant', (), 0.1, 0.0, 1), config.momentum, False, config.weight_decay))
  batches = pipeline.train_dataset(splits.x_train, splits.y_train, config.batch_size, 0,
                                   config.seed).take(3)
  defence.fit(batches, epochs=1, verbose=0)
  for a, b in zip(binary.get_weights(), network.get_weights()):
    np.testing.assert_array_equal(a, b)


def test_evaluate_model_equals_the_evaluation_binary(tmp_path):
  model = _functional(num_classes=3)
  defence = agkd_tf.defend(model, 'natural')
  defence.compile(optimizer=keras.optimizers.SGD(0.1))
  defence.fit(_dataset(), epochs=3, verbose=0)
  export = str(tmp_path / 'export')
  model.export(export, verbose=False)
  data = str(tmp_path / 'data.npz')
  np.savez(data, x_train=_X, y_train=_Y, x_test=_X, y_test=_Y)
  attacks = ('clean', 'fgsm', 'pgd5', 'cw5')
  proc = run_binary('evaluate', f'--saved_model={export}', f'--dataset=npz:{data}',
                    f'--attacks={",".join(attacks)}', '--num_examples=0', '--nomasking_checks',
                    f'--output_dir={tmp_path / "eval"}', '--verbose=0')
  assert proc.returncode == 0, proc.stderr
  binary = io_utils.read_json(str(tmp_path / 'eval' / 'eval.json'))
  assert binary['num_examples'] == len(_Y)  # --num_examples=0: the whole split, in file order.
  report = agkd_tf.evaluate_model(model, _X, _Y, attacks=attacks, masking_checks=False)
  assert report['accuracy'] == binary['accuracy']
  assert report['masking_flags'] == [] and set(report['max_perturbation']) == set(attacks[1:])
  assert '| user_cnn |' in report.to_markdown()


def test_evaluate_model_reports_aa_and_masking_flags():
  model = _functional()
  report = agkd_tf.evaluate_model(model, _X[:12], _Y[:12], attacks=('clean', 'pgd20', 'aa'),
                                  eps=8 / 255)
  assert set(report['accuracy']) == {'clean', 'pgd20', 'aa'}
  assert report['accuracy']['aa'] <= report['accuracy']['pgd20']
  assert {'pgd20_restarts', 'eps_sweep', 'pgd20_large_eps'} <= set(report)
  assert isinstance(report['masking_flags'], list)
  assert 'AutoAttack components' in report.to_markdown()


def test_evaluate_model_rejects_bad_input_in_one_line():
  model = _functional()
  _one_line_value_error(lambda: agkd_tf.evaluate_model(model, _X, _Y, eps=0.0), 'eps=0.0')
  _one_line_value_error(lambda: agkd_tf.evaluate_model(model, _X, _Y[:, None]),
                        'labels must be \\[N\\]')
  _one_line_value_error(lambda: agkd_tf.evaluate_model(model, _X, _Y, attacks=('pgx',)),
                        'unknown attack')
  probs = keras.Model(model.inputs, keras.layers.Softmax()(model.outputs[0]))
  _one_line_value_error(lambda: agkd_tf.evaluate_model(probs, _X, _Y), 'probabilities')


def test_the_attacks_docstring_example_runs_as_written():
  doc = agkd_tf.attacks.__doc__
  block = doc[doc.index('Example'):]
  lines = [l[4:] for l in block.splitlines()[1:] if l.startswith('    ') or not l.strip()]
  code = '\n'.join(lines).strip()
  assert re.search(r'get_attack\(.pgd20.\)', code)
  exec(compile(code, 'attacks-docstring', 'exec'), {})  # pylint: disable=exec-used
