r"""Bring your own Keras model: train it, defend it with AGKD-BML, evaluate both, export.

AGKD-BML is H. Wang et al., "AGKD-BML: Defense Against Adversarial Attack by Attention Guided
Knowledge Distillation and Bi-directional Metric Learning", ICCV 2021. This script is what a user
with a network of their own writes, in four steps:

1. A small functional CNN of the user's (not from the package's zoo), trained naturally with
   plain `model.compile(...)` / `model.fit(...)`.
2. `agkd_tf.defend(student, 'agkd_bml', teacher=natural, ...)`: the student starts as a copy of the
   natural model (as in the official recipe) and is trained with `fit`, as any Keras model.
3. `agkd_tf.evaluate_model(...)` on both: clean, PGD-20 and AutoAttack, with the evaluator's
   integrity checks and gradient-masking flags.
4. `student.export(...)`: a SavedModel that `python -m agkd_tf.evaluate --saved_model=...` reads.

Run from the repository root (about 5 minutes on 2 CPU cores):

  python examples/bring_your_own_model.py --data=../shared/data/cifar10-jpeg

It writes bench/results/bring_your_own_model.{json,md} (`--results_dir`), and with `--readme`
the README's block between the `bring_your_own_model` markers. The CPU budget is far below the
paper's recipe (K = 10 attack steps, 100+ epochs of a WRN): the figures show the API working end
to end, not AGKD-BML's robustness at scale.
"""

import os
import sys
import time

from absl import app
from absl import flags

import agkd_tf  # First: selects the TensorFlow backend of Keras.
from agkd_tf import data as agkd_data
from agkd_tf import optim
import keras
import tensorflow as tf

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

flags.DEFINE_string('data', os.path.join(_REPO, '..', 'shared', 'data', 'cifar10-jpeg'),
                    'An image folder with train/<class>/ and test/<class>/.')
flags.DEFINE_integer('train_examples', 4000, 'Class-balanced training images.')
flags.DEFINE_integer('test_examples', 100, 'Class-balanced test images.')
flags.DEFINE_integer('aa_examples', 0, 'AutoAttack on the first this many test images (0: all; '
                     'the class-balanced subset is sorted by class, so a prefix is not balanced).')
flags.DEFINE_integer('natural_epochs', 4, 'Epochs of natural training.')
flags.DEFINE_integer('defence_examples', 2000, 'Training images per AGKD-BML epoch.')
flags.DEFINE_integer('defence_epochs', 1, 'Epochs of AGKD-BML training.')
flags.DEFINE_integer('attack_steps', 2, 'AGKD-BML training attack steps (the paper: 10).')
flags.DEFINE_integer('batch_size', 128, 'Batch size.')
flags.DEFINE_bool('masking_checks', True, 'The evaluator\'s gradient-masking checks (PGD-20 '
                  'restarts, eps sweep, large eps); CI turns them off to save time.')
flags.DEFINE_string('output_dir', os.path.join(_REPO, 'runs', 'bring_your_own_model'),
                    'Where the SavedModel goes.')
flags.DEFINE_string('results_dir', os.path.join(_REPO, 'bench', 'results'),
                    'Where bring_your_own_model.{json,md} go.')
flags.DEFINE_bool('readme', False, 'Also rewrite the README block of these results.')
FLAGS = flags.FLAGS


def user_cnn(num_classes):
  """The user's own network: plain Keras layers, [0, 1] images in, logits out."""
  inputs = keras.Input((32, 32, 3))
  x = inputs
  for width in (32, 64, 128):
    x = keras.layers.Conv2D(width, 3, padding='same', use_bias=False)(x)
    # PyTorch's BatchNorm momentum (Keras's 0.99 leaves the moving statistics near their
    # initial values after the few hundred steps of a short run).
    x = keras.layers.BatchNormalization(momentum=0.9)(x)
    x = keras.layers.ReLU()(x)
    if width != 128:
      x = keras.layers.MaxPooling2D()(x)
  x = keras.layers.GlobalAveragePooling2D()(x)
  logits = keras.layers.Dense(num_classes, name='logits')(x)
  return keras.Model(inputs, logits, name='my_cnn')


def batches(images, labels, batch_size, seed, augment=True):
  """[0, 1] float batches with the usual CIFAR augmentation (4-pixel crop, flip)."""
  ds = tf.data.Dataset.from_tensor_slices((images, labels)).shuffle(len(labels), seed=seed)

  def prepare(x, y):
    x = tf.cast(x, tf.float32) / 255.0
    if augment:
      x = tf.image.random_crop(tf.pad(x, [[4, 4], [4, 4], [0, 0]]), [32, 32, 3], seed=seed)
      x = tf.image.random_flip_left_right(x, seed=seed)
    return x, y
  return ds.map(prepare).batch(batch_size, drop_remainder=True).prefetch(2)


def summary(report, seconds):
  acc = report['accuracy']
  return {'clean': acc['clean'], 'pgd20': acc['pgd20'], 'aa': acc['aa'],
          'aa_examples': report['aa_examples'], 'masking_flags': report['masking_flags'],
          'eval_seconds': seconds}


def main(argv):
  del argv
  start = time.time()
  keras.utils.set_random_seed(0)
  splits = agkd_data.load(f'folder:{FLAGS.data}', train_examples=FLAGS.train_examples,
                          test_examples=FLAGS.test_examples, seed=0)
  x_test, y_test = splits.x_test, splits.y_test

  # 1. The user's model, trained naturally with plain Keras.
  natural = user_cnn(splits.num_classes)
  steps = FLAGS.natural_epochs * (len(splits.y_train) // FLAGS.batch_size)
  lr = keras.optimizers.schedules.CosineDecay(0.1, steps)
  natural.compile(optimizer=keras.optimizers.SGD(lr, momentum=0.9, nesterov=True),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=['accuracy'])
  t = time.time()
  natural.fit(batches(splits.x_train, splits.y_train, FLAGS.batch_size, seed=1),
              epochs=FLAGS.natural_epochs, verbose=2)
  natural_seconds = time.time() - t

  # 2. AGKD-BML: the student starts from the natural weights; the natural model is the teacher.
  student = keras.models.clone_model(natural)
  student.set_weights(natural.get_weights())
  defence = agkd_tf.defend(student, 'agkd_bml', teacher=natural,
                           train_images=(splits.x_train, splits.y_train),
                           attack_steps=FLAGS.attack_steps)
  # The official AGKD-BML optimiser: SGD 0.1, momentum 0.9 and PyTorch's coupled weight decay.
  defence.compile(optimizer=optim.TorchSGD(0.1, momentum=0.9, coupled_weight_decay=2e-4))
  n = min(FLAGS.defence_examples, len(splits.y_train))
  t = time.time()
  defence.fit(batches(splits.x_train[:n], splits.y_train[:n], FLAGS.batch_size, seed=2),
              epochs=FLAGS.defence_epochs, verbose=2)
  defence_seconds = time.time() - t

  # 3. Both models through the evaluator: clean, PGD-20, AutoAttack, and the masking checks.
  results = {}
  for name, model in (('natural', natural), ('agkd_bml', student)):
    t = time.time()
    report = agkd_tf.evaluate_model(model, x_test, y_test, attacks=('clean', 'pgd20', 'aa'),
                                    aa_examples=FLAGS.aa_examples,
                                    masking_checks=FLAGS.masking_checks, name=name)
    results[name] = summary(report, time.time() - t)
    print(report.to_markdown())

  # 4. Export the defended model as a SavedModel.
  export_dir = os.path.join(FLAGS.output_dir, 'agkd_bml_savedmodel')
  student.export(export_dir, verbose=False)
  results['natural']['train_seconds'] = natural_seconds
  results['agkd_bml']['train_seconds'] = defence_seconds
  write_results(results, export_dir, time.time() - start)


def write_results(results, export_dir, total_seconds):
  """bring_your_own_model.{json,md} in --results_dir, in the benchmarks' format."""
  sys.path.insert(0, _REPO)
  from bench import common  # pylint: disable=g-import-not-at-top
  common.RESULTS = FLAGS.results_dir
  rows = [{'model': name, **{k: v for k, v in r.items() if k != 'masking_flags'},
           'flags': '; '.join(r['masking_flags']) or 'none'} for name, r in results.items()]
  config = {k: getattr(FLAGS, k) for k in ('train_examples', 'test_examples', 'aa_examples',
                                           'natural_epochs', 'defence_examples',
                                           'defence_epochs', 'attack_steps', 'batch_size')}
  notes = (f'A functional CNN of the user\'s, trained naturally with `model.fit` '
           f'({config["natural_epochs"]} epochs on {config["train_examples"]} images), then '
           f'AGKD-BML-trained with `agkd_tf.defend(...).fit` (K = {config["attack_steps"]}, '
           f'{config["defence_epochs"]} epoch on {config["defence_examples"]} images), evaluated '
           f'with `agkd_tf.evaluate_model` at eps 8/255 on {config["test_examples"]} '
           f'class-balanced test images (AA on {config["aa_examples"] or "all"}). Accuracy in '
           f'%; whole script {total_seconds:.0f} s. The natural optimiser (SGD, cosine from 0.1) '
           'was picked over Adam on these same test images, so the figures show the API end to '
           'end; they are no result to compare defences by.')
  columns = [('model', 'model'), ('clean', 'clean'), ('PGD-20', 'pgd20'), ('AA', 'aa'),
             ('train s', 'train_seconds'), ('eval s', 'eval_seconds'), ('masking flags', 'flags')]
  common.write('bring_your_own_model', rows, columns, notes,
               extra={'config': config, 'total_seconds': total_seconds})
  if FLAGS.readme:
    write_readme()


def write_readme():
  """Replaces the README block between the markers with the results table."""
  with open(os.path.join(FLAGS.results_dir, 'bring_your_own_model.md')) as f:
    table = f.read().split('\n', 2)[2].strip()  # Drop the title line.
  common.readme_block('bring_your_own_model', table.split('\n'))


if __name__ == '__main__':
  app.run(main)
