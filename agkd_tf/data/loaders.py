"""Dataset loaders, registered by `--dataset` name.

- `cifar10`, `svhn`: TensorFlow Datasets (`svhn_cropped`), stored under `--data_dir`.
- `tiny_imagenet`: the official tiny-imagenet-200 folder (`train/<wnid>/images/*.JPEG`,
  `val/images/` + `val/val_annotations.txt`); the validation set serves as the test split.
- `folder:PATH`: `PATH/{train,test}/<class>/<image>` with JPEG or PNG images.
- `npz:PATH`: arrays `x_train, y_train, x_test, y_test` in the keras.datasets layout.
- `synthetic` or `synthetic:S`: generated SxS images for tests and smoke runs only.

Each loader returns a `Splits` with the full splits; subsetting happens afterwards, except that
file-based loaders take the subset before decoding so quick runs do not decode 50,000 files.
"""

import os
import socket
import zipfile

import numpy as np

from agkd_tf.data import base
from agkd_tf.data import image_files
from agkd_tf.core.errors import UserError

_LOADERS = {}

# Where TFDS downloads each dataset from; checked first so offline machines fail in seconds
# instead of retrying for minutes.
_TFDS = {
    'cifar10': ('cifar10', 'www.cs.toronto.edu', True),
    'svhn': ('svhn_cropped', 'ufldl.stanford.edu', False),
}

OFFLINE_HINT = ('Pass --data_dir=DIR holding a prepared copy, or use an image folder with '
                '--dataset=folder:PATH (for example --dataset=folder:../shared/data/cifar10-jpeg).')


def register(name):
  def decorator(fn):
    if name in _LOADERS:
      raise ValueError(f'Duplicate dataset loader: {name}')
    _LOADERS[name] = fn
    return fn
  return decorator


def names():
  """The valid `--dataset` forms."""
  return sorted(_LOADERS)


def _host_reachable(host, port=443, timeout=5.0):
  try:
    with socket.create_connection((host, port), timeout=timeout):
      return True
  except OSError:
    return False


def _load_tfds(name, data_dir, train_examples, test_examples, seed):
  """Loads a TFDS dataset whole, downloading only when it is not prepared yet."""
  del train_examples, test_examples, seed  # Subsetting happens on the decoded arrays.
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  tfds_name, host, flip = _TFDS[name]

  def load(download):
    return tfds.load(tfds_name, split=['train', 'test'], data_dir=data_dir, as_supervised=True,
                     download=download, with_info=True)

  def to_numpy(ds):
    # Batches rather than `batch_size=-1`: the latter crashes TF on datasets of unknown length
    # (as tfds.testing.mock_data makes them).
    xs, ys = [], []
    for x, y in tfds.as_numpy(ds.batch(4096)):
      xs.append(x)
      ys.append(y)
    return np.concatenate(xs), np.concatenate(ys)

  try:
    (train, test), info = load(download=False)
  except Exception as e:  # pylint: disable=broad-except
    # TFDS raises AssertionError or DatasetNotFoundError when the data is not prepared.
    if not _host_reachable(host):
      raise UserError(
          f'dataset {name} is not prepared under --data_dir={data_dir or "~/tensorflow_datasets"} '
          f'and {host} cannot be reached to download it (offline?). {OFFLINE_HINT}') from e
    try:
      (train, test), info = load(download=True)
    except Exception as e2:  # pylint: disable=broad-except
      raise UserError(f'downloading {name} with TensorFlow Datasets failed '
                      f'({type(e2).__name__}). {OFFLINE_HINT}') from e2
  x_train, y_train = to_numpy(train)
  x_test, y_test = to_numpy(test)
  label = info.features['label']
  return base.Splits(name, x_train.astype(np.uint8), y_train.astype(np.int32),
                     x_test.astype(np.uint8), y_test.astype(np.int32), label.num_classes,
                     list(label.names), flip=flip)


register('cifar10')(lambda *a: _load_tfds('cifar10', *a))
register('svhn')(lambda *a: _load_tfds('svhn', *a))


def _require_dir(path, what):
  if not os.path.isdir(path):
    raise UserError(f'{what} {path} does not exist or is not a directory')


def _pick(files_per_class, num_examples, seed):
  """Class-balanced choice of (path, label) pairs before any decoding."""
  paths = [p for files in files_per_class for p in files]
  labels = np.array([c for c, files in enumerate(files_per_class) for _ in files], np.int32)
  idx = base.balanced_indices(labels, num_examples, len(files_per_class), seed)
  return [paths[i] for i in idx], labels[idx]


@register('folder')
def _load_folder(path, train_examples, test_examples, seed):
  """`PATH/{train,test}/<class>/<image>`; the class list comes from train/."""
  _require_dir(path, 'image folder')
  for part in ('train', 'test'):
    _require_dir(os.path.join(path, part), f'the {part} split of folder dataset')
  classes = sorted(d for d in os.listdir(os.path.join(path, 'train'))
                   if os.path.isdir(os.path.join(path, 'train', d)))
  if len(classes) < 2:
    raise UserError(f'{path}/train must hold one sub-folder per class; found {len(classes)}')
  extra = sorted(set(d for d in os.listdir(os.path.join(path, 'test'))
                     if os.path.isdir(os.path.join(path, 'test', d))) - set(classes))
  if extra:
    raise UserError(f'{path}/test has classes missing from train/: {", ".join(extra)}')
  arrays = []
  for part, n, s in (('train', train_examples, seed), ('test', test_examples, seed + 1)):
    per_class = []
    for c in classes:
      d = os.path.join(path, part, c)
      files = image_files.list_images(d) if os.path.isdir(d) else []
      if part == 'train' and not files:
        raise UserError(f'class folder {d} holds no JPEG or PNG images')
      per_class.append(files)
    files, labels = _pick(per_class, n, s)
    if not files:
      raise UserError(f'{path}/{part} holds no JPEG or PNG images')
    arrays += [image_files.decode_images(files), labels]
  return base.Splits(f'folder:{path}', arrays[0], arrays[1], arrays[2], arrays[3], len(classes),
                     classes)


@register('tiny_imagenet')
def _load_tiny_imagenet(path, train_examples, test_examples, seed):
  """The official tiny-imagenet-200 layout; `val/` is the test split."""
  if not path:
    raise UserError('--dataset=tiny_imagenet needs --data_dir pointing at tiny-imagenet-200/')
  _require_dir(os.path.join(path, 'train'), 'tiny-imagenet train folder')
  classes = sorted(d for d in os.listdir(os.path.join(path, 'train'))
                   if os.path.isdir(os.path.join(path, 'train', d)))
  train_files = [image_files.list_images(os.path.join(path, 'train', c, 'images'))
                 for c in classes]
  ann = os.path.join(path, 'val', 'val_annotations.txt')
  if not os.path.isfile(ann):
    raise UserError(f'{ann} is missing: the tiny-imagenet val split needs it')
  index = {c: i for i, c in enumerate(classes)}
  test_files = [[] for _ in classes]
  with open(ann) as f:
    for line_no, line in enumerate(f, 1):
      parts = line.split('\t')
      if len(parts) < 2 or parts[1] not in index:
        raise UserError(f'{ann}:{line_no}: expected "<file>\\t<wnid>..." with a known wnid')
      test_files[index[parts[1]]].append(os.path.join(path, 'val', 'images', parts[0]))
  tr, ytr = _pick(train_files, train_examples, seed)
  te, yte = _pick(test_files, test_examples, seed + 1)
  return base.Splits('tiny_imagenet', image_files.decode_images(tr), ytr,
                     image_files.decode_images(te), yte, len(classes), classes)


@register('npz')
def _load_npz(path, train_examples, test_examples, seed):
  """Arrays `x_train, y_train, x_test, y_test`; uint8 0..255 or float 0..1 images."""
  del train_examples, test_examples, seed
  if not os.path.isfile(path):
    raise UserError(f'npz file {path} does not exist')
  try:
    # allow_pickle=False: a user's file must never run code when loaded.
    with np.load(path, allow_pickle=False) as f:
      missing = [k for k in ('x_train', 'y_train', 'x_test', 'y_test') if k not in f.files]
      if missing:
        raise UserError(f'{path} lacks the arrays {", ".join(missing)}')
      arrays = {k: f[k] for k in ('x_train', 'y_train', 'x_test', 'y_test')}
  except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
    raise UserError(f'{path} is not a readable .npz file ({type(e).__name__})') from None
  for k in ('x_train', 'x_test'):
    x = arrays[k]
    if x.ndim == 3:  # Grayscale stored without a channel axis, as keras.datasets.mnist does.
      x = x[..., None]
    arrays[k] = x if x.dtype == np.uint8 else x.astype(np.float32)
  y_train = arrays['y_train'].reshape(-1).astype(np.int32)
  y_test = arrays['y_test'].reshape(-1).astype(np.int32)
  num_classes = int(max(y_train.max(initial=0), y_test.max(initial=0))) + 1
  return base.Splits(f'npz:{path}', arrays['x_train'], y_train, arrays['x_test'], y_test,
                     num_classes, [str(i) for i in range(num_classes)])


@register('synthetic')
def _load_synthetic(size, train_examples, test_examples, seed):
  """Generated data for tests and smoke runs: a colour and a pattern per class, plus noise."""
  del seed  # The data itself is fixed; subsets are drawn later with the run's seed.
  try:
    side = int(size) if size else 32
  except ValueError:
    raise UserError(f'synthetic:{size}: the size must be an integer, e.g. synthetic:16') from None
  if not 4 <= side <= 256:
    raise UserError(f'synthetic:{side}: the size must lie in [4, 256]')
  num_classes = 10
  rng = np.random.RandomState(1234)
  # Each class has its own colour (which survives crops and flips, so a small CNN learns it in a
  # few steps) plus a weaker smooth spatial pattern.
  colours = rng.uniform(0.2, 0.8, size=(num_classes, 1, 1, 3))
  pattern = rng.uniform(-1, 1, size=(num_classes, side, side, 3))
  for _ in range(2):
    pattern = (pattern + np.roll(pattern, 1, 1) + np.roll(pattern, 1, 2)) / 3
  protos = colours + 0.15 * pattern

  def make(n):
    y = np.arange(n) % num_classes
    x = protos[y] + rng.normal(0, 0.05, size=(n, side, side, 3))
    return (np.clip(x, 0, 1) * 255).round().astype(np.uint8), y.astype(np.int32)

  x_train, y_train = make(train_examples or 1000)
  x_test, y_test = make(test_examples or 200)
  return base.Splits(f'synthetic:{side}', x_train, y_train, x_test, y_test, num_classes,
                     [f'synthetic_{i}' for i in range(num_classes)])
