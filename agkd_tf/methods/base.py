"""The shared base of every training method (defence): a keras.Model with its own train_step.

It follows Keras 3's built-in TensorFlow `train_step` (keras/src/backend/tensorflow/trainer.py):
compute the loss, scale it for the optimiser, apply gradients, update trackers with the *unscaled*
values, return `{name: value}`. What the base adds, so each method only writes its loss:

- Loss scaling under tf.distribute: a method returns a per-replica *mean* over its local batch;
  the base divides by the number of replicas exactly once, because the optimiser's all-reduce
  sums replica gradients. (Keras's own `compute_loss` does the same division internally; we do
  not call it, so we divide here.)
- Mixed precision: `optimizer.scale_loss` (a no-op unless a LossScaleOptimizer wraps it).
- Weight decay is PyTorch-style and lives in `optim.TorchSGD`, after the all-reduce.
- Trackers: one `keras.metrics.Mean` per loss term named by the method, plus accuracies.
- A frozen teacher slot: the teacher network is never trainable and never in the optimiser.
- A seeded tf.random.Generator for attack starts and class-bank draws, checkpointed with the run.
"""

import dataclasses

import keras
import tensorflow as tf

from agkd_tf import models
from agkd_tf.methods import hparams


class Method(keras.Model):
  """Base class of the methods.

  Subclasses set `loss_terms` (names of the scalar terms they report; the first is the total),
  `accuracies` (names of accuracy trackers) and implement `compute_losses`.

  Args:
    network: the model zoo network being trained.
    num_classes: K.
    config: the method's hyper-parameters: an instance of `hparams_class` or of a subclass
      (`MethodConfig`, every method's fields); label_smoothing None means the method's default.
    teacher: optional frozen teacher network.
    class_bank: optional `data.ClassBank` of the training set.
    seed: seed of the method's random generator.
    flip: whether the dataset allows horizontal flips (augmentation of drawn bank images).
    augment: whether training images are augmented at all (`--augment`).
    num_train: training-set size (per-example state, CAT).
  """

  loss_terms = ('loss',)
  accuracies = ('accuracy',)
  hparams_class = hparams.CommonHParams  # The fields the method reads; subclasses extend it.
  default_label_smoothing = 0.0  # Used when --label_smoothing is not given.
  # Methods that keep per-example state (CAT's eps_i) set this: their batches then carry each
  # example's training-set index, and `compute_losses` receives it as `indices=`.
  needs_indices = False

  @classmethod
  def resolve(cls, config):
    """`config` with the method's defaults filled in where it leaves them to the method (None)."""
    if config.label_smoothing is None:
      config = dataclasses.replace(config, label_smoothing=cls.default_label_smoothing)
    return config

  def __init__(self, network, num_classes, config, teacher=None, class_bank=None, seed=0,
               flip=True, augment=True, num_train=0, **kwargs):
    super().__init__(**kwargs)
    if not isinstance(config, self.hparams_class):
      raise TypeError(f'{type(self).__name__} takes {self.hparams_class.__name__} (or '
                      f'MethodConfig), not {type(config).__name__}')
    config = self.resolve(config)
    self.network = network
    self.num_classes = num_classes
    self.config = config
    self.flip, self.augment, self.num_train = flip, augment, num_train
    self.class_bank = class_bank
    self.teacher = teacher
    if teacher is not None:
      teacher.trainable = False
    self.rng = tf.random.Generator.from_seed(seed)
    self._loss_trackers = {n: keras.metrics.Mean(name=n) for n in self.loss_terms}
    self._acc_trackers = {n: keras.metrics.SparseCategoricalAccuracy(name=n)
                          for n in self.accuracies}
    # Clean loss and accuracy of `evaluate()` and of fit's validation (`val_loss`,
    # `val_accuracy`, what EarlyStopping watches). As in a compiled Keras model, a training
    # tracker of the same name serves evaluation too (Keras resets the metrics before each): if
    # it were a second object, Keras would report the reset training tracker for it, since it
    # takes the metrics' results whenever the step's keys equal their names (natural training).
    own = {m.name: m for m in self.metrics}
    self._test_trackers = (
        own['loss'] if isinstance(own.get('loss'), keras.metrics.Mean)
        else keras.metrics.Mean(name='loss'),
        own['accuracy'] if isinstance(own.get('accuracy'), keras.metrics.SparseCategoricalAccuracy)
        else keras.metrics.SparseCategoricalAccuracy(name='accuracy'))

  @classmethod
  def needs_teacher(cls, config):  # pylint: disable=unused-argument
    """Whether the method needs a frozen teacher network (`--teacher_dir`)."""
    return False

  @classmethod
  def needs_class_bank(cls, config):  # pylint: disable=unused-argument
    """Whether the method draws training images by class (`data.ClassBank`)."""
    return False

  def call(self, images, training=False):
    return self.network(images, training=training)

  def attack_logits(self, images, dtype=None):
    """The network's BN-eval logits as the training-time attacks see them (float32).

    They are computed in `dtype` if given, else in `--attack_dtype` (`config.attack_dtype`;
    None: the network's own).
    """
    with models.compute_dtype(self.network, dtype or self.config.attack_compute_dtype()):
      logits = self.network(images, training=False)['logits']
    return tf.cast(logits, tf.float32)

  @property
  def metrics(self):
    return list(self._loss_trackers.values()) + list(self._acc_trackers.values())

  def compute_losses(self, images, labels):
    """The method's loss on one replica's batch.

    Args:
      images: [B, H, W, C] float32 in [0, 1].
      labels: [B] int32.

    Returns:
      (terms, predictions): `terms` maps every name of `loss_terms` to a scalar mean over the
      local batch, the first being the total to minimise; `predictions` maps every name of
      `accuracies` to the logits that accuracy is measured on.
    """
    raise TypeError(f'{type(self).__name__} must define compute_losses()')

  def train_step(self, data):
    images, labels = data[0], data[1]
    extra = {'indices': data[2]} if self.needs_indices else {}
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    variables = self.network.trainable_variables
    with tf.GradientTape() as tape:
      terms, predictions = self.compute_losses(images, labels, **extra)
      total = terms[self.loss_terms[0]]
      scaled = self.optimizer.scale_loss(total / replicas)
    grads = tape.gradient(scaled, variables)
    self.optimizer.apply(grads, variables)
    for name, value in terms.items():
      self._loss_trackers[name].update_state(value)
    for name, logits in predictions.items():
      self._acc_trackers[name].update_state(labels, logits)
    return {m.name: m.result() for m in self.metrics}


  def test_step(self, data):
    """Clean cross-entropy and accuracy in inference mode (`evaluate`, fit's validation)."""
    images, labels = data[0], data[1]
    logits = tf.cast(self.network(images, training=False)['logits'], tf.float32)
    loss, accuracy = self._test_trackers
    loss.update_state(keras.losses.sparse_categorical_crossentropy(labels, logits,
                                                                   from_logits=True))
    accuracy.update_state(labels, logits)
    return {m.name: m.result() for m in self._test_trackers}

  def reset_metrics(self):
    super().reset_metrics()
    for m in self._test_trackers:
      m.reset_state()

  def untracked_state(self):
    """Variables outside Keras's own tracking that a Keras weights file must carry too.

    The binaries checkpoint the method with `tf.train.Checkpoint`, which finds these by itself.
    `model.save_weights` (and so `keras.callbacks.BackupAndRestore`) only sees Keras variables;
    without the generator's state a resumed `fit` would draw other attack starts than an
    uninterrupted one.
    """
    return [self.rng.state]

  def save_own_variables(self, store):
    super().save_own_variables(store)
    for i, v in enumerate(self.untracked_state()):
      store[f'untracked_{i}'] = v.numpy()

  def load_own_variables(self, store):
    own = self._trainable_variables + self._non_trainable_variables
    for i, v in enumerate(own):
      v.assign(store[f'{i}'])
    keys = set(store.keys())
    for i, v in enumerate(self.untracked_state()):
      if f'untracked_{i}' in keys:
        v.assign(store[f'untracked_{i}'])


# Every method's fields in one frozen dataclass: what tests and users building a method by hand
# pass (a method reads only its own; `Method.hparams_class` names them).
MethodConfig = hparams.AllHParams
