"""Data: loaders by `--dataset` name, the input pipeline and the class-indexed bank.

`load()` returns in-memory `Splits`; `pipeline` turns them into deterministic, augmented tf.data
batches; `ClassBank` draws per-example images of requested classes inside the graph
(AGKD-BML's backward samples and SML's positives).
"""

from agkd_tf.data.base import balanced_indices
from agkd_tf.data.base import Splits
from agkd_tf.data.base import subset
from agkd_tf.data.class_bank import ClassBank
from agkd_tf.data.loaders import names
from agkd_tf.data.loaders import OFFLINE_HINT
from agkd_tf.core.errors import UserError
from agkd_tf.core.options import option

# The names --dataset takes; validate_name's message and the flags' help both say them.
DATASET_NAMES = ('cifar10, svhn, tiny_imagenet, folder:PATH, npz:PATH, synthetic[:SIZE] '
                 '(synthetic is for tests and smoke runs only)')


def parse_name(dataset):
  """Splits `folder:PATH` style names into (kind, argument)."""
  kind, _, arg = dataset.partition(':')
  return kind, arg


def validate_name(dataset):
  """Raises UserError unless `dataset` names a registered loader."""
  from agkd_tf.data import loaders  # pylint: disable=g-import-not-at-top
  kind, arg = parse_name(dataset)
  if kind not in loaders._LOADERS:  # pylint: disable=protected-access
    raise UserError(f'unknown dataset "{dataset}"; valid: {DATASET_NAMES}')
  if kind in ('folder', 'npz') and not arg:
    raise UserError(f'--dataset={kind} needs a path: --dataset={kind}:PATH')


def dataset_option(default, default_text=''):
  """The `dataset` field of a config (training's and the evaluator's): one help text."""
  return option(default, f'Dataset: {DATASET_NAMES}.' + (f' Default: {default_text}.'
                                                            if default_text else ''))


def data_dir_option():
  """The `data_dir` field of a config (training's and the evaluator's)."""
  return option(None, 'TFDS data directory (cifar10, svhn) or the tiny-imagenet-200 folder; '
                'offline, point it at a prepared TFDS directory or use --dataset=folder:PATH.')


def load(dataset, data_dir=None, train_examples=0, test_examples=0, seed=0):
  """Loads a dataset by name and takes class-balanced subsets.

  Args:
    dataset: `cifar10`, `svhn`, `tiny_imagenet`, `folder:PATH`, `npz:PATH` or `synthetic[:S]`.
    data_dir: TFDS data directory, or the tiny-imagenet-200 folder.
    train_examples: size of a class-balanced training subset (0: all).
    test_examples: size of a class-balanced test subset (0: all).
    seed: seed of the subset draw.

  Returns:
    A `Splits`.

  Raises:
    UserError: unknown name, missing or corrupt data, or no network for a download.
  """
  from agkd_tf.data import base as base_lib  # pylint: disable=g-import-not-at-top
  from agkd_tf.data import loaders  # pylint: disable=g-import-not-at-top
  validate_name(dataset)
  kind, arg = parse_name(dataset)
  if kind == 'tiny_imagenet':
    arg = data_dir
  loader = loaders._LOADERS[kind]  # pylint: disable=protected-access
  if kind in ('cifar10', 'svhn'):
    splits = loader(data_dir, train_examples, test_examples, seed)
  else:
    splits = loader(arg, train_examples, test_examples, seed)
  base_lib.check_splits(splits)
  return subset(splits, train_examples, test_examples, seed)


__all__ = ['ClassBank', 'Splits', 'balanced_indices', 'load', 'names', 'subset', 'validate_name',
           'OFFLINE_HINT']
