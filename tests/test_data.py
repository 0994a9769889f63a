"""Tests of the data loaders, the deterministic pipeline and the class bank."""

import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from agkd_tf import data
from agkd_tf.data import image_files
from agkd_tf.data import loaders
from agkd_tf.data import pipeline
from agkd_tf.core.errors import UserError
from tests import helpers


@pytest.mark.parametrize('name,flip', [('cifar10', True), ('svhn', False)])
def test_tfds_datasets_with_mock_data(name, flip):
  with tfds.testing.mock_data(num_examples=20):
    splits = data.load(name)
  assert splits.x_train.shape == (20, 32, 32, 3)
  assert splits.y_train.min() >= 0 and splits.y_train.max() < 10
  assert splits.x_train.dtype == np.uint8
  assert splits.num_classes == 10
  assert splits.flip == flip
  assert len(splits.class_names) == 10


def test_tfds_offline_error_names_the_alternatives(monkeypatch, tmp_path):
  monkeypatch.setattr(loaders, '_host_reachable', lambda host, **kw: False)
  with pytest.raises(UserError) as e:
    data.load('cifar10', data_dir=str(tmp_path))
  message = str(e.value)
  assert '--data_dir' in message and '--dataset=folder:' in message
  assert 'cannot be reached' in message


def test_folder_dataset(tmp_path):
  root = helpers.write_image_folder(str(tmp_path / 'imgs'))
  splits = data.load(f'folder:{root}')
  assert splits.class_names == ['cat', 'dog', 'frog']
  assert splits.x_train.shape == (18, 8, 8, 3)
  assert splits.x_test.shape == (9, 8, 8, 3)
  np.testing.assert_array_equal(np.bincount(splits.y_train), [6, 6, 6])
  # Colour encodes the class, so the decoded pixels must follow the labels.
  means = [splits.x_train[splits.y_train == c].mean() for c in range(3)]
  assert means[0] < means[1] < means[2]


def test_folder_class_balanced_subset(tmp_path):
  root = helpers.write_image_folder(str(tmp_path / 'imgs'))
  splits = data.load(f'folder:{root}', train_examples=9, test_examples=3, seed=3)
  np.testing.assert_array_equal(np.bincount(splits.y_train), [3, 3, 3])
  np.testing.assert_array_equal(np.bincount(splits.y_test), [1, 1, 1])


def test_corrupt_image_error_names_the_file(tmp_path):
  root = helpers.write_image_folder(str(tmp_path / 'imgs'), fmt='jpg')
  bad = os.path.join(root, 'train', 'dog', '001.jpg')
  with open(bad, 'wb') as f:
    f.write(b'\xff\xd8\xff\xe0 this is not a JPEG')
  with pytest.raises(UserError, match='001.jpg'):
    data.load(f'folder:{root}')


def test_odd_sized_image_is_refused(tmp_path):
  root = helpers.write_image_folder(str(tmp_path / 'imgs'))
  from PIL import Image  # pylint: disable=g-import-not-at-top
  Image.fromarray(np.zeros((9, 8, 3), np.uint8)).save(os.path.join(root, 'train', 'frog',
                                                                   '002.png'))
  with pytest.raises(UserError, match='002.png.*share one size'):
    data.load(f'folder:{root}')


def test_missing_folder_and_empty_class(tmp_path):
  with pytest.raises(UserError, match='does not exist'):
    data.load(f'folder:{tmp_path}/nope')
  root = helpers.write_image_folder(str(tmp_path / 'imgs'))
  os.makedirs(os.path.join(root, 'train', 'zebra'))
  with pytest.raises(UserError, match='zebra holds no JPEG or PNG'):
    data.load(f'folder:{root}')


def test_npz_dataset(tmp_path):
  rng = np.random.RandomState(0)
  path = str(tmp_path / 'd.npz')
  np.savez(path, x_train=rng.randint(0, 255, (12, 8, 8, 3)).astype(np.uint8),
           y_train=np.arange(12) % 4, x_test=rng.rand(4, 8, 8, 3).astype(np.float32),
           y_test=np.arange(4)[:, None])
  splits = data.load(f'npz:{path}')
  assert splits.num_classes == 4
  assert splits.x_test.dtype == np.float32
  assert splits.y_test.shape == (4,)
  bad = str(tmp_path / 'bad.npz')
  with open(bad, 'wb') as f:
    f.write(b'garbage')
  with pytest.raises(UserError, match='bad.npz'):
    data.load(f'npz:{bad}')
  np.savez(bad, x_train=np.zeros((2, 4, 4, 3), np.uint8))
  with pytest.raises(UserError, match='lacks the arrays'):
    data.load(f'npz:{bad}')


def test_tiny_imagenet_layout(tmp_path):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  root = tmp_path / 'tiny-imagenet-200'
  wnids = ['n01443537', 'n01629819']
  for c, wnid in enumerate(wnids):
    d = root / 'train' / wnid / 'images'
    d.mkdir(parents=True)
    for i in range(3):
      Image.fromarray(np.full((64, 64, 3), 50 * (c + 1), np.uint8)).save(
          d / f'{wnid}_{i}.JPEG', format='JPEG')
  (root / 'val' / 'images').mkdir(parents=True)
  lines = []
  for i, wnid in enumerate([wnids[1], wnids[0], wnids[1]]):
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(
        root / 'val' / 'images' / f'val_{i}.JPEG', format='JPEG')
    lines.append(f'val_{i}.JPEG\t{wnid}\t0\t0\t63\t63')
  (root / 'val' / 'val_annotations.txt').write_text('\n'.join(lines) + '\n')
  splits = data.load('tiny_imagenet', data_dir=str(root))
  assert splits.x_train.shape == (6, 64, 64, 3)
  assert splits.class_names == wnids
  np.testing.assert_array_equal(np.sort(splits.y_test), [0, 1, 1])


def test_synthetic_and_unknown_names():
  splits = data.load('synthetic:8', train_examples=40, test_examples=20)
  assert splits.x_train.shape == (40, 8, 8, 3)
  assert splits.name.startswith('synthetic')
  with pytest.raises(UserError, match='unknown dataset "imagenet"'):
    data.load('imagenet')


def test_pipeline_is_deterministic_and_resumable():
  splits = data.load('synthetic:8', train_examples=64, test_examples=10)
  full = list(pipeline.train_dataset(splits.x_train, splits.y_train, 16, epoch=2, seed=5))
  again = list(pipeline.train_dataset(splits.x_train, splits.y_train, 16, epoch=2, seed=5))
  resumed = list(pipeline.train_dataset(splits.x_train, splits.y_train, 16, epoch=2, seed=5,
                                        skip_batches=2))
  other_epoch = list(pipeline.train_dataset(splits.x_train, splits.y_train, 16, epoch=3, seed=5))
  assert len(full) == 4 and len(resumed) == 2
  for a, b in zip(full, again):
    np.testing.assert_array_equal(a[0], b[0])
  for a, b in zip(full[2:], resumed):
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
  assert not np.array_equal(full[0][1], other_epoch[0][1])
  images = full[0][0].numpy()
  assert images.dtype == np.float32 and images.min() >= 0 and images.max() <= 1


def test_augmentation_crops_and_flips():
  x = tf.reshape(tf.range(2 * 4 * 4, dtype=tf.float32), [2, 4, 4, 1]) + 1.0
  out = pipeline.augment_batch(x, tf.constant([1, 2], tf.int32), pad=1, flip=False)
  assert out.shape == x.shape
  # Every output pixel is either zero padding or a pixel of the same image.
  for i in range(2):
    values = set(out[i].numpy().ravel().tolist()) - {0.0}
    assert values <= set(x[i].numpy().ravel().tolist())
  flipped = pipeline.augment_batch(x, tf.constant([3, 4], tf.int32), pad=0, flip=True)
  for i in range(2):
    assert (np.array_equal(flipped[i], x[i]) or
            np.array_equal(flipped[i], x[i].numpy()[:, ::-1]))


def test_class_bank_draws_the_requested_classes():
  splits = data.load('synthetic:8', train_examples=100, test_examples=10)
  bank = data.ClassBank(splits.x_train, splits.y_train, splits.num_classes)
  rng = tf.random.Generator.from_seed(0)
  wanted = tf.constant(np.random.RandomState(0).randint(0, 10, 256), tf.int32)

  @tf.function
  def draw(classes):
    return bank.sample(classes, rng)

  images, labels = draw(wanted)
  np.testing.assert_array_equal(labels, wanted)
  assert images.shape == (256, 8, 8, 3)
  # Each drawn image really is a training image of its class.
  flat_train = splits.x_train.reshape(len(splits.x_train), -1).astype(np.float32) / 255
  for img, c in zip(images.numpy()[:20], wanted.numpy()[:20]):
    matches = np.flatnonzero(np.all(np.isclose(flat_train, img.ravel()), axis=1))
    assert matches.size and (splits.y_train[matches] == c).all()
  # Draws cover several images of a class, not always the same one.
  _, first = draw(tf.zeros([64], tf.int32)), None
  idx = bank.sample_indices(tf.zeros([64], tf.int32), rng.uniform([64]))
  assert len(np.unique(idx.numpy())) > 3


def test_shared_cifar10_jpeg_folder(shared_cifar):
  splits = data.load(f'folder:{shared_cifar}', train_examples=200, test_examples=100, seed=0)
  assert splits.class_names[:3] == ['airplane', 'automobile', 'bird']
  assert splits.x_train.shape == (200, 32, 32, 3) and splits.x_test.shape == (100, 32, 32, 3)
  np.testing.assert_array_equal(np.bincount(splits.y_test), [10] * 10)
  mean, std = splits.channel_stats()
  # Real CIFAR-10 statistics (about 0.49, 0.48, 0.45 and 0.25, 0.24, 0.26).
  np.testing.assert_allclose(mean, [0.49, 0.48, 0.45], atol=0.05)
  np.testing.assert_allclose(std, [0.25, 0.24, 0.26], atol=0.04)


def _pil_pixels(path):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with Image.open(path) as im:
    return np.asarray(im.convert('RGB'))


def test_jpeg_pixels_equal_pil_on_generated_files(tmp_path):
  """Noisy colour and grayscale JPEGs (4:2:0 and 4:4:4) and a PNG named .jpg decode as PIL does."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rng = np.random.RandomState(0)
  paths = []
  for i, (mode, subsampling) in enumerate([('RGB', 2), ('RGB', 0), ('L', 0)]):
    pixels = rng.randint(0, 256, (32, 32, 3 if mode == 'RGB' else 1), np.uint8).squeeze()
    path = str(tmp_path / f'{i}.jpg')
    Image.fromarray(pixels, mode).save(path, quality=75, subsampling=subsampling)
    paths.append(path)
  png_named_jpg = str(tmp_path / 'png.jpg')
  Image.fromarray(rng.randint(0, 256, (32, 32, 3), np.uint8)).save(png_named_jpg, format='PNG')
  paths.append(png_named_jpg)
  decoded = image_files.decode_images(paths)
  for path, image in zip(paths, decoded):
    np.testing.assert_array_equal(image, _pil_pixels(path), err_msg=path)


def test_jpeg_pixels_equal_pil_on_shared_cifar(shared_cifar):
  """The shared CIFAR-10 JPEGs: 100 test images of every class give PIL's pixels exactly."""
  paths = []
  for name in sorted(os.listdir(os.path.join(shared_cifar, 'test'))):
    paths += image_files.list_images(os.path.join(shared_cifar, 'test', name))[:10]
  decoded = image_files.decode_images(paths)
  differing = [p for p, image in zip(paths, decoded) if not np.array_equal(image, _pil_pixels(p))]
  assert not differing, f'{len(differing)} of {len(paths)} differ from PIL, e.g. {differing[:3]}'
