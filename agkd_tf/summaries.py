"""TensorBoard summaries of a run: the writers and one tag scheme.

Two writers per run directory, `summaries/train` and `summaries/eval`. The tags:

  summaries/train   train/<term>         every loss term and accuracy, every `log_every_steps`
                    train/lr, train/images_per_sec
                    train/skipped_batch  a batch skipped under --nan_policy=skip_batch
                    epoch/<term>         the same terms at each epoch end, with epoch/seconds,
                                         epoch/images_per_sec (and epoch/skipped_batches)
                    attention/...        the attention maps of a fixed batch (AGKD-BML), per epoch
                    hparams              the run's configuration
  summaries/eval    eval/<attack>        accuracy in [0, 1]: `eval/clean` and `eval/pgd<K>` from the
                                         trainer (on the held-out subset during training; clean on
                                         the whole test split at the end), every attack of
                                         `python -m agkd_tf.evaluate` from the evaluator

Only the chief of a multi-worker run writes summaries; the other workers get `NoSummaries`.
"""

import dataclasses
import os

import tensorflow as tf


def eval_tag(attack):
  """The tag of an accuracy under `attack` ('clean', 'pgd10', 'aa', ...) in summaries/eval."""
  return f'eval/{attack}'


class NoSummaries:
  """What a non-chief worker writes to TensorBoard: nothing."""

  def train_scalars(self, values, step):
    pass

  def eval_accuracies(self, values, step):
    pass

  def hparams(self, config):
    pass

  def attention(self, method, images, labels, step):
    pass


class Summaries(NoSummaries):
  """The TensorBoard writers of a run directory: summaries/train and summaries/eval."""

  def __init__(self, model_dir):
    self.train = tf.summary.create_file_writer(os.path.join(model_dir, 'summaries', 'train'))
    self.eval = tf.summary.create_file_writer(os.path.join(model_dir, 'summaries', 'eval'))

  @staticmethod
  def _scalars(writer, values, step):
    with writer.as_default(step=step):
      for name, value in values.items():
        tf.summary.scalar(name, value)
    writer.flush()

  def train_scalars(self, values, step):
    """Scalars of summaries/train, tags as given (train/..., epoch/...)."""
    self._scalars(self.train, values, step)

  def eval_accuracies(self, values, step):
    """{attack: accuracy in [0, 1]} to summaries/eval as eval/<attack>."""
    self._scalars(self.eval, {eval_tag(k): v for k, v in values.items()}, step)

  def hparams(self, config):
    from tensorboard.plugins.hparams import api as hp  # pylint: disable=g-import-not-at-top
    values = {}
    for k, v in dataclasses.asdict(config).items():
      if isinstance(v, (bool, int, float, str)):
        values[k] = v
      elif v is not None:
        values[k] = str(list(v) if isinstance(v, tuple) else v)
    with self.train.as_default():
      hp.hparams(values)

  def attention(self, method, images, labels, step):
    """Images of a method's attention maps on a fixed batch, if it has any (AGKD-BML)."""
    if not hasattr(method, 'attention_images'):
      return
    maps = method.attention_images(images, labels)
    with self.train.as_default(step=step):
      for name, value in maps.items():
        tf.summary.image(name, value, max_outputs=8)
    self.train.flush()
