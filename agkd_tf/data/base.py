"""In-memory dataset splits, class-balanced subsets and the per-dataset statistics.

Every loader returns a `Splits`: the whole training and test sets held in host memory in their
native dtype (uint8 for decoded images, float32 for arrays that came as floats). Keeping uint8 in
memory makes CIFAR-10 150 MB instead of 600 MB; conversion to float32 in [0, 1] happens per batch
in the input pipeline. eps is therefore always in pixel units of [0, 1] images (8/255).
"""

import dataclasses
from typing import Optional, Sequence

import numpy as np

from agkd_tf.core.errors import UserError


@dataclasses.dataclass
class Splits:
  """A dataset held in memory.

  Attributes:
    name: the `--dataset` value it came from.
    x_train: [N, H, W, C] uint8 (0..255) or float32 (0..1) images.
    y_train: [N] int32 labels.
    x_test: test images, same layout.
    y_test: test labels.
    num_classes: number of classes.
    class_names: names of the classes, index-aligned with the labels.
    flip: whether horizontal flips are a valid augmentation (not for digits).
  """
  name: str
  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  num_classes: int
  class_names: Sequence[str]
  flip: bool = True

  @property
  def image_shape(self):
    return tuple(int(d) for d in self.x_train.shape[1:])

  def channel_stats(self):
    """Per-channel mean and std of the training images in [0, 1] units."""
    scale = 255.0 if self.x_train.dtype == np.uint8 else 1.0
    # Accumulate per channel in float64 chunks: a float copy of all of CIFAR-10 would cost 1.2 GB.
    c = self.x_train.shape[-1]
    total = np.zeros(c)
    total_sq = np.zeros(c)
    count = 0
    for start in range(0, len(self.x_train), 4096):
      chunk = self.x_train[start:start + 4096].reshape(-1, c).astype(np.float64) / scale
      total += chunk.sum(0)
      total_sq += (chunk**2).sum(0)
      count += chunk.shape[0]
    mean = total / max(count, 1)
    std = np.sqrt(np.maximum(total_sq / max(count, 1) - mean**2, 1e-12))
    return mean.astype(np.float32), std.astype(np.float32)


def balanced_indices(labels, num_examples, num_classes, seed):
  """Indices of a class-balanced random subset.

  Args:
    labels: [N] integer labels.
    num_examples: requested subset size; 0 or >= N means all examples.
    num_classes: number of classes.
    seed: seed of the draw, so the same flags give the same subset.

  Returns:
    Sorted int64 indices: num_examples // num_classes per class (all of a class's examples when
    it has fewer), plus the remainder spread over the first classes.
  """
  labels = np.asarray(labels)
  if not num_examples or num_examples >= len(labels):
    return np.arange(len(labels))
  rng = np.random.RandomState(seed)
  per_class = np.full(num_classes, num_examples // num_classes)
  per_class[:num_examples % num_classes] += 1
  chosen = []
  for c in range(num_classes):
    members = np.flatnonzero(labels == c)
    rng.shuffle(members)
    chosen.append(members[:per_class[c]])
  return np.sort(np.concatenate(chosen))


def subset(splits: Splits, train_examples: int, test_examples: int, seed: int) -> Splits:
  """Class-balanced subsets of both splits (0 keeps a split whole)."""
  tr = balanced_indices(splits.y_train, train_examples, splits.num_classes, seed)
  te = balanced_indices(splits.y_test, test_examples, splits.num_classes, seed + 1)
  return dataclasses.replace(
      splits, x_train=splits.x_train[tr], y_train=splits.y_train[tr],
      x_test=splits.x_test[te], y_test=splits.y_test[te])


def check_splits(splits: Splits, source: Optional[str] = None):
  """Validates shapes, label ranges and emptiness; raises UserError naming the source."""
  where = source or splits.name
  for part in ('train', 'test'):
    x = getattr(splits, f'x_{part}')
    y = getattr(splits, f'y_{part}')
    if len(x) == 0:
      raise UserError(f'{where}: the {part} split has no images')
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
      raise UserError(f'{where}: {part} images must be [N, H, W, 1 or 3], got {list(x.shape)}')
    if len(x) != len(y):
      raise UserError(f'{where}: {len(x)} {part} images but {len(y)} labels')
    if y.min() < 0 or y.max() >= splits.num_classes:
      raise UserError(f'{where}: {part} labels must lie in [0, {splits.num_classes - 1}]')
    if x.dtype != np.uint8 and (np.nanmin(x) < 0 or np.nanmax(x) > 1 or np.isnan(x).any()):
      raise UserError(f'{where}: float {part} images must lie in [0, 1]')
  if splits.x_train.shape[1:] != splits.x_test.shape[1:]:
    raise UserError(f'{where}: train images are {splits.x_train.shape[1:]} but test images '
                    f'are {splits.x_test.shape[1:]}')
