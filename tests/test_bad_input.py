"""The bad-input table: each kind of bad input to train, evaluate and export ends with one clear
`error:` line, a non-zero exit, no traceback, and nothing half-written.

"Nothing half-written" is checked on the file tree: every case runs in its own directory, and
after the failing command no file there is new or changed (the shared fixtures neither), except
where a case says what it may leave: the diverging run keeps its good checkpoints, never a
result.json, an export or a checkpoint from the NaN step on.

Kinds this table exercises (`CASES`), beyond those tests/test_binaries.py already covers (unknown
dataset, model, method and strategy names; --eps=8; --lr=-1; --label_smoothing=1.5; a missing
folder; an unknown train flag; a missing flagfile; a garbage JPEG in the test split; a model_dir
under a file; a run directory of another model; export of a non-run) and the in-process checks of
tests/test_evaluate.py and tests/test_train.py:

  unknown names: --nan_policy value, an attack name;
  out of range: evaluate --eps=8, --lr=11, --label_smoothing=1;
  missing data: a missing npz;
  corrupt data: a truncated PNG in the train split;
  an empty class folder; an odd-sized image in a folder; grayscale data for an RGB model;
  unwritable: --model_dir naming a file, --export_dir under a file;
  a checkpoint from another model (export --checkpoint);
  SavedModels with a flat input and with probability outputs;
  a malformed flagfile line; an unknown export flag;
  NaN: a diverging run (--lr=10, momentum 1, weight decay 1) and NaN pixels in an npz;
  --strategy=multi_worker without TF_CONFIG (the launcher's own checks are in
  tests/test_multiworker.py).

The subprocesses run four at a time (each pays ~6 s or more of TensorFlow import). Untrusted
files: npz files are read without pickle (an object array is refused), and no code path of the
package enables pickle or turns Keras's safe_mode off (checked on the source).
"""

import collections
import concurrent.futures
import os
import re

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from agkd_tf import data
from agkd_tf import export_lib
from agkd_tf import models
from tests import conftest
from tests import helpers
from tests.test_evaluate import _Probabilities  # pylint: disable=g-importing-member
from tests.test_evaluate import _save  # pylint: disable=g-importing-member

_TRAIN = ['--model=cnn-cpu', '--dataset=synthetic:8', '--train_examples=64', '--test_examples=20',
          '--epochs=1', '--batch_size=32', '--eval_attack_steps=0', '--eval_examples=10',
          '--verbose=0', '--export=false', '--model_dir={case}/run']

Case = collections.namedtuple('Case', 'kind binary args expected prepare allowed',
                              defaults=(None, None))


def _folder(case, bad=None):
  """A tiny image folder in case/imgs, with `bad(root)` applied."""
  root = helpers.write_image_folder(os.path.join(case, 'imgs'))
  if bad:
    bad(root)


def _truncated_png(root):
  path = os.path.join(root, 'train', 'dog', '001.png')
  with open(path, 'r+b') as f:
    f.truncate(os.path.getsize(path) // 2)


def _empty_class(root):
  for name in os.listdir(os.path.join(root, 'train', 'frog')):
    os.remove(os.path.join(root, 'train', 'frog', name))


def _odd_size(root):
  Image.fromarray(np.zeros((9, 9, 3), np.uint8)).save(os.path.join(root, 'train', 'cat', '002.png'))


def _npz(case, name, x):
  y = np.arange(len(x)) % 4
  np.savez(os.path.join(case, name), x_train=x, y_train=y, x_test=x[:8], y_test=y[:8])


def _nan_images():
  x = np.full((64, 8, 8, 3), 0.5, np.float32)
  x[5, 2, 3, 1] = np.nan  # One bad pixel, as a broken preprocessing script leaves.
  return x


def _file(case, name, text):
  with open(os.path.join(case, name), 'w') as f:
    f.write(text)


def _nan_checkpoints(case, stderr):
  """The diverging run may keep only checkpoints from before its NaN step."""
  step = int(re.search(r'non-finite at step (\d+)', stderr).group(1))
  numbers = [int(m.group(1)) for f in os.listdir(os.path.join(case, 'run', 'checkpoints'))
             for m in [re.match(r'ckpt-(\d+)\.index$', f)] if m]
  assert numbers and max(numbers) < step, (numbers, step)


CASES = [
    Case('unknown nan policy', 'train', _TRAIN + ['--nan_policy=never'],
         'flag --nan_policy=never: value should be one of <stop|skip_batch>'),
    Case('unknown attack', 'evaluate', ['--model_dir={shared}/run', '--attacks=clean,pgdx'],
         'unknown attack "pgdx"'),
    Case('eps out of range (evaluate)', 'evaluate', ['--model_dir={shared}/run', '--eps=8'],
         '8/255 = 0.0314, not 8'),
    Case('lr out of range', 'train', _TRAIN + ['--lr=11'], '--lr must lie in (0, 10]'),
    Case('init_from not a run', 'train', _TRAIN + ['--init_from={case}'],
         'is not a finished training run (it has no model_spec.json)'),
    Case('init_from of another input shape', 'train',
         _TRAIN[:1] + ['--dataset=synthetic:16'] + _TRAIN[2:] + ['--init_from={shared}/run'],
         'has input_shape=[8, 8, 3], but this run needs [16, 16, 3]'),
    Case('label smoothing out of range', 'train', _TRAIN + ['--label_smoothing=1'],
         '--label_smoothing must lie in [0, 1)'),
    Case('missing npz', 'train', _TRAIN + ['--dataset=npz:{case}/none.npz'], 'does not exist'),
    Case('truncated PNG', 'train', _TRAIN + ['--dataset=folder:{case}/imgs'],
         'dog/001.png: cannot be decoded', lambda c: _folder(c, _truncated_png)),
    Case('empty class folder', 'train', _TRAIN + ['--dataset=folder:{case}/imgs'],
         'train/frog holds no JPEG or PNG images', lambda c: _folder(c, _empty_class)),
    Case('odd-sized image', 'train', _TRAIN + ['--dataset=folder:{case}/imgs'],
         'cat/002.png: image is 9x9 but the images before it are 8x8',
         lambda c: _folder(c, _odd_size)),
    Case('grayscale data for an RGB model', 'evaluate',
         ['--model_dir={shared}/run', '--dataset=npz:{case}/gray.npz', '--output_dir={case}/out',
          '--attacks=clean'], 'the model takes (8, 8, 3) images',
         lambda c: _npz(c, 'gray.npz', np.zeros((16, 8, 8), np.uint8))),
    Case('model_dir is a file', 'train', _TRAIN + ['--model_dir={case}/file'],
         'exists and is not a directory', lambda c: _file(c, 'file', 'x')),
    Case('export_dir under a file', 'export',
         ['--model_dir={shared}/run', '--export_dir={case}/file/sm'],
         '/file exists and is not a directory',
         lambda c: _file(c, 'file', 'x')),
    Case('checkpoint of another model', 'export',
         ['--model_dir={shared}/run', '--checkpoint={shared}/other/ckpt-1',
          '--export_dir={case}/sm'], 'does not hold a cnn-cpu network'),
    Case('SavedModel with a flat input', 'evaluate',
         ['--saved_model={shared}/flat_sm', '--dataset=synthetic:8', '--output_dir={case}/out'],
         'must take float32 NHWC images'),
    Case('SavedModel with probability outputs', 'evaluate',
         ['--saved_model={shared}/probs_sm', '--dataset=synthetic:8', '--output_dir={case}/out'],
         'looks like probabilities'),
    Case('malformed flagfile', 'train', _TRAIN + ['--flagfile={case}/bad.cfg'],
         'unexpected arguments: epochs 3',
         lambda c: _file(c, 'bad.cfg', '--model=cnn-cpu\nepochs 3\n')),
    Case('unknown export flag', 'export', ['--model_dir={shared}/run', '--export_dirr={case}/sm'],
         "Unknown command line flag 'export_dirr'"),
    Case('NaN loss (diverging)', 'train',
         _TRAIN + ['--lr=10', '--momentum=1', '--weight_decay=1', '--epochs=4',
                   '--train_examples=128', '--batch_size=16'],
         'the loss became non-finite at step', None,
         ('run/flags.json', 'run/model_spec.json', 'run/summaries/', 'run/checkpoints/')),
    Case('NaN pixels', 'train', _TRAIN + ['--dataset=npz:{case}/nan.npz'],
         'float train images must lie in [0, 1]', lambda c: _npz(c, 'nan.npz', _nan_images())),
    Case('multi_worker without TF_CONFIG', 'train', _TRAIN + ['--strategy=multi_worker'],
         'reads the cluster from TF_CONFIG, which is not set'),
]


_ABSL_LOG = re.compile(r'^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ [\w.]+:\d+\] ')


def _tree(root):
  out = {}
  for d, dirs, files in os.walk(root):
    for name in dirs + files:
      path = os.path.join(d, name)
      st = os.lstat(path)
      key = os.path.relpath(path, root) + ('/' if name in dirs else '')
      out[key] = None if name in dirs else (st.st_size, st.st_mtime_ns)
  return out


@pytest.fixture(scope='module')
def shared(tmp_path_factory):
  """A run directory of ours (cnn-cpu, 8x8 RGB, 10 classes), a checkpoint of another network and
  three SavedModels, made in-process without training."""
  root = str(tmp_path_factory.mktemp('shared'))
  network = models.build('cnn-cpu', (8, 8, 3), 10)
  tf.train.Checkpoint(network=network).save(os.path.join(root, 'run', 'checkpoints', 'ckpt'))
  from agkd_tf import io_utils  # pylint: disable=g-import-not-at-top
  io_utils.write_json_atomic(os.path.join(root, 'run', 'model_spec.json'), {
      'model': 'cnn-cpu', 'input_shape': [8, 8, 3], 'num_classes': 10,
      'class_names': [str(i) for i in range(10)], 'dataset': 'synthetic:8'})
  other = models.build('cnn-cpu', (8, 8, 3), 5)  # Another head: the kernels do not fit.
  tf.train.Checkpoint(network=other).save(os.path.join(root, 'other', 'ckpt'))
  export_lib.export_saved_model(network, (8, 8, 3), os.path.join(root, 'logits_sm'))
  _save(_Probabilities(), os.path.join(root, 'probs_sm'), [None, 8, 8, 3])
  flat = _Probabilities()
  tf.saved_model.save(flat, os.path.join(root, 'flat_sm'), signatures={
      'serving_default': tf.function(lambda x: {'logits': x @ flat.w},
                                     input_signature=[tf.TensorSpec([None, 192], tf.float32)])})
  return root


@pytest.fixture(scope='module')
def results(shared, tmp_path_factory):
  """Runs every case, four subprocesses at a time; returns {kind: (case_dir, proc, before)}."""
  before_shared = _tree(shared)
  jobs = {}
  for case in CASES:
    case_dir = str(tmp_path_factory.mktemp('case'))
    if case.prepare:
      case.prepare(case_dir)
    args = [a.format(case=case_dir, shared=shared) for a in case.args]
    jobs[case.kind] = (case_dir, args, _tree(case_dir))
  with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
    futures = {kind: pool.submit(conftest.run_binary, next(c for c in CASES
                                                           if c.kind == kind).binary, *args)
               for kind, (_, args, _) in jobs.items()}
    out = {kind: (jobs[kind][0], f.result(), jobs[kind][2]) for kind, f in futures.items()}
  assert _tree(shared) == before_shared, 'a failing command wrote into the shared fixtures'
  return out


def test_the_table_is_large_enough():
  assert len({c.kind for c in CASES}) == len(CASES) >= 15
  assert {c.binary for c in CASES} >= {'train', 'evaluate', 'export'}


@pytest.mark.parametrize('case', CASES, ids=[c.kind for c in CASES])
def test_bad_input(case, results):
  case_dir, proc, before = results[case.kind]
  assert proc.returncode != 0, proc.stdout[-2000:] + proc.stderr[-2000:]
  assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  # One error line, last; before it at most absl log lines of a run that had started (TensorFlow
  # logs each checkpoint save), never other output.
  lines = [l for l in proc.stderr.splitlines() if l.strip() and not _ABSL_LOG.match(l)]
  assert len(lines) == 1 and lines[0].startswith('error: '), proc.stderr[-3000:]
  assert proc.stderr.rstrip().endswith(lines[0])
  assert case.expected in lines[0], lines[0]
  after = _tree(case_dir)
  changed = sorted(p for p in after if after[p] != before.get(p, 'absent'))
  # A case's allowed paths, their contents and the directories above them.
  unexpected = [p for p in changed
                if not any(p.startswith(a) or a.startswith(p) for a in case.allowed or ())]
  assert not unexpected, f'half-written: {unexpected}'
  assert not any(p.endswith(('result.json', 'saved_model.pb')) for p in changed), changed
  if case.kind == 'NaN loss (diverging)':
    _nan_checkpoints(case_dir, lines[0])


def test_grayscale_images_in_a_folder_become_rgb(tmp_path):
  """Not an error: a grayscale PNG among RGB ones is decoded to RGB (the README's guarantee)."""
  root = helpers.write_image_folder(str(tmp_path / 'imgs'))
  Image.fromarray(np.full((8, 8), 128, np.uint8), mode='L').save(
      os.path.join(root, 'train', 'cat', '000.png'))
  splits = data.load(f'folder:{root}')
  assert splits.x_train.shape[1:] == (8, 8, 3)


def test_untrusted_files_are_never_unpickled(tmp_path):
  """An npz holding a pickled object array is refused, and nothing in the package opts in to
  pickle or out of Keras's safe_mode."""
  path = str(tmp_path / 'objects.npz')
  x = np.empty(4, dtype=object)
  np.savez(path, x_train=x, y_train=np.zeros(4), x_test=x, y_test=np.zeros(4))
  with pytest.raises(Exception, match='not a readable .npz file'):
    data.load(f'npz:{path}')
  offenders = []
  for d, _, files in os.walk(os.path.join(conftest.REPO, 'agkd_tf')):
    for name in files:
      if name.endswith('.py'):
        with open(os.path.join(d, name)) as f:
          text = f.read()
        for pattern in (r'allow_pickle\s*=\s*True', r'safe_mode\s*=\s*False', r'\bpickle\.load',
                        r'enable_unsafe_deserialization', r'\bdill\b', r'\bjoblib\.load'):
          if re.search(pattern, text):
            offenders.append(f'{name}: {pattern}')
  assert not offenders
