r"""Natural-training throughput of our training loop against a plain `model.fit`.

Both train the same Keras network (fresh weights each), on the same augmented tf.data batches, in
the same process, with SGD momentum 0.9 and float32 on the CPU. They alternate in rounds, and the
figure is the median over rounds of ours / fit images per second: >= 0.95 means our machinery
(method base, PyTorch-style SGD, trackers, checkpoint-friendly pipeline) costs nothing.

  python bench/train_throughput.py [--models=cnn-cpu,wrn-16-4] [--steps=30] [--rounds=3]
"""

import os
import statistics
import sys
import time

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import agkd_tf  # pylint: disable=g-import-not-at-top,unused-import,wrong-import-position
import keras  # pylint: disable=g-import-not-at-top,wrong-import-position
import tensorflow as tf  # pylint: disable=g-import-not-at-top,wrong-import-position

from agkd_tf import data  # pylint: disable=g-import-not-at-top,wrong-import-position
from agkd_tf import train_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from agkd_tf import train_step  # pylint: disable=g-import-not-at-top,wrong-import-position
from agkd_tf.data import pipeline  # pylint: disable=g-import-not-at-top,wrong-import-position
from bench import common  # pylint: disable=g-import-not-at-top,wrong-import-position

flags.DEFINE_list('models', ['cnn-cpu', 'wrn-16-4'], 'Networks to measure.')
flags.DEFINE_integer('steps', 30, 'Timed steps per round and side.')
flags.DEFINE_integer('rounds', 4, 'Alternating rounds (even, so each side goes first equally often).')
flags.DEFINE_integer('batch_size', 128, 'Batch size.')
flags.DEFINE_string('dataset', 'folder:../shared/data/cifar10-jpeg',
                    'Data (falls back to synthetic:32 when the shared folder is absent).')
FLAGS = flags.FLAGS


def _batches(splits, epoch):
  return pipeline.train_dataset(splits.x_train, splits.y_train, FLAGS.batch_size, epoch, 0)


def _ours(model_name, splits):
  config = train_lib.TrainConfig(model_dir='unused', model=model_name, epochs=1,
                                 batch_size=FLAGS.batch_size, lr=0.01, lr_schedule='constant',
                                 weight_decay=5e-4)
  strategy = tf.distribute.OneDeviceStrategy('/cpu:0')
  _, method, _ = train_lib.build_method(config, splits, strategy)
  step = train_step.make_step_fn(method, strategy, False)

  def run(epoch):
    it = iter(_batches(splits, epoch))
    float(step(it)['loss'])  # Warm-up (tracing) outside the timed window.
    start = time.perf_counter()
    for _ in range(FLAGS.steps):
      float(step(it)['loss'])
    return FLAGS.steps * FLAGS.batch_size / (time.perf_counter() - start)
  return run


def _fit(model_name, splits):
  mean, std = splits.channel_stats()
  from agkd_tf import models  # pylint: disable=g-import-not-at-top
  network = models.build(model_name, splits.image_shape, splits.num_classes, mean, std)
  inputs = keras.Input(splits.image_shape)
  model = keras.Model(inputs, network(inputs)['logits'])
  model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=['accuracy'], jit_compile=False)

  class Timer(keras.callbacks.Callback):

    def on_train_batch_end(self, batch, logs=None):
      if batch == 0:
        self.start = time.perf_counter()

    def on_train_end(self, logs=None):
      self.end = time.perf_counter()

  def run(epoch):
    timer = Timer()
    model.fit(_batches(splits, epoch).take(FLAGS.steps + 1), epochs=1, verbose=0,
              callbacks=[timer])
    return FLAGS.steps * FLAGS.batch_size / (timer.end - timer.start)
  return run


def main(argv):
  del argv
  try:
    splits = data.load(FLAGS.dataset, train_examples=FLAGS.batch_size * (FLAGS.steps + 2) * 2,
                       test_examples=100)
  except agkd_tf.core.errors.UserError:
    splits = data.load('synthetic:32', train_examples=FLAGS.batch_size * (FLAGS.steps + 2) * 2,
                       test_examples=100)
  rows = []
  for name in FLAGS.models:
    ours, fit = _ours(name, splits), _fit(name, splits)
    ratios, ours_ips, fit_ips = [], [], []
    for r in range(FLAGS.rounds):
      # Alternate which side goes first so drifting machine load hits both alike.
      first, second = (ours, fit) if r % 2 == 0 else (fit, ours)
      a = first(r)
      b = second(r)
      o, f = (a, b) if r % 2 == 0 else (b, a)
      ours_ips.append(o)
      fit_ips.append(f)
      ratios.append(o / f)
      print(f'{name} round {r}: ours {o:.1f} img/s, model.fit {f:.1f} img/s, ratio {o / f:.3f}',
            flush=True)
    rows.append({'model': name, 'batch': FLAGS.batch_size, 'ours_img_per_s':
                 statistics.median(ours_ips), 'fit_img_per_s': statistics.median(fit_ips),
                 'ratio_median': statistics.median(ratios), 'ratio_min': min(ratios),
                 'ratio_max': max(ratios), 'goal': '>= 0.95'})
  common.write('train_throughput', rows,
               [('model', 'model'), ('batch', 'batch'), ('ours img/s', 'ours_img_per_s'),
                ('model.fit img/s', 'fit_img_per_s'), ('ratio (median)', 'ratio_median'),
                ('min', 'ratio_min'), ('max', 'ratio_max'), ('goal', 'goal')],
               notes=(f'Natural training, float32, CPU, {FLAGS.steps} timed steps per side and '
                      f'round, {FLAGS.rounds} alternating rounds, data {splits.name}. Ratio = our '
                      'loop / model.fit of the same network.'))


if __name__ == '__main__':
  app.run(main)
