r"""AGKD-BML training speed: our compiled step against the official PyTorch code, on one CPU.

Wang et al., "Adversarial Robustness via Attention Guided Knowledge Distillation and
Bi-directional Metric Learning", ICCV 2021; official code github.com/hongw579/AGKD-BML. Both sides
run one AGKD-BML training step (most-confusing label, two targeted PGD-K attacks, the class-bank
backward sample, the student's BN-train pass on [x1', x1, x2'] and the teacher's on [x1, x2], LSCE
+ MART + attention L1 + angular triplet, SGD) on WRN-16-4, batch 128, float32, in the same process,
alternating in rounds, so that drifting machine load hits both alike. The figure is our images per
second over the official code's, median over rounds (goal: >= 3x at K = 2 and K = 10).

The official code is a measuring stick only: it is read from a checkout given by `--official_dir`
(`git clone https://github.com/hongw579/AGKD-BML`), copied to a scratch folder, patched there at
run time with the few textual changes below (each must apply exactly once; the output lists them)
and run as its own `__main__` with `--num_epoches=0`, so it builds its data, networks, attack,
optimiser and class index exactly as it does for training; then its own `train()` runs on a few
batches. Nothing of it enters the package, and torch is never a package dependency: run this in an
environment that has the CPU wheels of torch and torchvision beside agkd_tf.

What is timed: on both sides the step alone, from a batch in hand to the loss on the host. The
official x1 batch comes from its DataLoader outside the timer (as our step takes x1 from a
prefetched tf.data pipeline); its x2 draw (`i_class_idx.get_batch` + `to_variable`, which
indexes the dataset image by image, augmenting each) is inside, as it is part of its step. The
official code keeps CIFAR-10 in memory (torchvision's CIFAR10 class); the patch fills that same
class from the image folder, so its per-image `__getitem__` costs what it costs on real CIFAR-10.
The teacher is an untrained WRN of the same size on both sides (speed does not depend on the
weights).

  python bench/official_throughput.py --official_dir=PATH/TO/AGKD-BML [--ks=2,10] [--steps=2] \
      [--rounds=2] [--readme]
"""

import contextlib
import dataclasses
import glob
import itertools
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import types

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common  # pylint: disable=g-import-not-at-top,wrong-import-position

FLAGS = flags.FLAGS


def define_flags():
  """Defines the flags when run as a script (tests import it beside benchmarks' same names)."""
  flags.DEFINE_string('official_dir', None, 'A checkout of github.com/hongw579/AGKD-BML.')
  flags.DEFINE_list('ks', ['2', '10'], 'Attack steps K to measure (both attacks use K).')
  flags.DEFINE_integer('steps', 2, 'Timed training steps per side and round.')
  flags.DEFINE_integer('rounds', 2, 'Alternating rounds (even, so each side goes first equally).')
  flags.DEFINE_integer('batch_size', 128, 'Batch size (official default: 128).')
  flags.DEFINE_enum('model', 'wrn-16-4', ['wrn-16-4', 'wrn-28-10', 'wrn-34-10'],
                    'The WideResNet both sides train (official: wrn-28-10).')
  flags.DEFINE_integer('train_examples', 2560, 'Training images read on each side (the class bank '
                       'draws from these).')
  flags.DEFINE_string('dataset', '../shared/data/cifar10-jpeg',
                      'An image folder with train/<class>/ and test/<class>/.')
  flags.DEFINE_list('ours_attack_dtypes', ['float32'], 'Our attack passes\' dtypes to time, each '
                    'against the same official (float32) steps: float32, and bfloat16 where the CPU '
                    'has it (what --attack_dtype=auto picks there).')
  flags.DEFINE_bool('readme', False, 'Also rewrite the README block official_throughput.')


@dataclasses.dataclass(frozen=True)
class Patch:
  """One textual change to an official file: `old` must occur exactly `count` times."""
  path: str
  why: str
  old: str
  new: str
  count: int = 1


# The only changes made to the official code. Each says why it is needed to run here; none touches
# the training step's arithmetic.
PATCHES = (
    Patch('utils.py', 'numpy 2 removed the np.int alias',
          'dtype = np.int)', 'dtype = int)'),
    Patch('utils.py', 'numpy 2 no longer stores a one-element array into a scalar slot',
          'x1_pos_idx[j] = to_batch\n', 'x1_pos_idx[j] = to_batch[0]\n'),
    Patch('main.py', 'read the image folder into torchvision\'s in-memory CIFAR10 class instead '
          'of downloading (no network here)',
          'torchvision.datasets.CIFAR10(root=args.data_path, train=True, download=True, '
          'transform=transform_train)',
          '_BENCH.cifar10(args.data_path, "train", transform_train)'),
    Patch('main.py', 'the same for the test split',
          'torchvision.datasets.CIFAR10(root=args.data_path, train=False, download=True, '
          'transform=transform_test)',
          '_BENCH.cifar10(args.data_path, "test", transform_test)'),
    Patch('main.py', 'the WRN size from --model (official: WRN-28-10), student and '
          'teacher', 'WideResNet(depth=28, num_classes=10, widen_factor=10, dropRate=0.0)',
          'WideResNet(depth=_BENCH.depth, num_classes=10, widen_factor=_BENCH.widen, '
          'dropRate=0.0)', count=2),
    Patch('main.py', 'K from --ks for the backward attack (official: 10)',
          "'num_steps_PGD': 10,", "'num_steps_PGD': _BENCH.k,"),
    Patch('main.py', 'K from --ks for the forward attack (official: 10)',
          "'num_steps_MC': 10,", "'num_steps_MC': _BENCH.k,"),
    Patch('main.py', 'a timer from the batch in hand ...',
          '    for batch_idx, (input1, target1) in enumerate(iterator):\n',
          '    for batch_idx, (input1, target1) in enumerate(iterator):\n'
          '        _bench_t0 = _BENCH.clock()\n'),
    Patch('main.py', '... to the loss on the host (loss.item() waits for the step)',
          '        train_loss += loss.item()\n',
          '        train_loss += loss.item()\n'
          '        _BENCH.times.append(_BENCH.clock() - _bench_t0)\n'),
)


def apply_patches(src_dir, dst_dir, patches=PATCHES):
  """Copies the official code from `src_dir` to `dst_dir` and applies `patches` there.

  Raises:
    SystemExit: a file is missing or a patch's text does not occur exactly as often as expected
      (the official code changed: the patch list must be revisited, not guessed).
  """
  for name in ('main.py', 'utils.py', 'argument.py', 'custom_models'):
    src = os.path.join(src_dir, name)
    if not os.path.exists(src):
      raise SystemExit(f'error: {src_dir} is not a checkout of hongw579/AGKD-BML ({name} is '
                       'missing)')
    (shutil.copytree if os.path.isdir(src) else shutil.copy)(src, os.path.join(dst_dir, name))
  for p in patches:
    path = os.path.join(dst_dir, p.path)
    with open(path) as f:
      text = f.read()
    found = text.count(p.old)
    if found != p.count:
      raise SystemExit(f'error: patch "{p.why}" expects {p.count} occurrence(s) of {p.old!r} in '
                       f'{p.path}, found {found}')
    with open(path, 'w') as f:
      f.write(text.replace(p.old, p.new))


# What the run's environment needed beyond the patches, if anything (written to the results).
_TORCHVISION_SHIM = ('torchvision\'s compiled operators did not load (a CUDA build of torchvision '
                     'beside a CPU torch), so its operator registrations were skipped; the '
                     'official code uses only its transforms and CIFAR10 class, which are pure '
                     'Python')


def import_torchvision():
  """Imports torchvision; returns a note when it needed the operator-registration shim.

  Only the CUDA wheels of torchvision are on this machine's package index, and their compiled
  operators (nms, roi_align, ...) need the CUDA torch. torchvision registers fake kernels for
  them at import, which fails without the operators; the transforms and datasets the official
  code uses never call them.
  """
  try:
    import torchvision  # pylint: disable=g-import-not-at-top,unused-import
    return None
  except (RuntimeError, OSError):
    for name in [m for m in sys.modules if m == 'torchvision' or m.startswith('torchvision.')]:
      del sys.modules[name]
    sys.modules['torchvision._meta_registrations'] = types.ModuleType(
        'torchvision._meta_registrations')
    import torchvision  # pylint: disable=g-import-not-at-top,unused-import,redefined-outer-name
    return _TORCHVISION_SHIM


def _official_commit(official_dir):
  try:
    return subprocess.run(['git', '-C', official_dir, 'rev-parse', 'HEAD'], capture_output=True,
                          text=True, check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return 'unknown (not a git checkout)'


class _Bench:
  """What the patched official code reads (`_BENCH` in its namespace)."""

  def __init__(self, depth, widen, k, limit):
    self.depth, self.widen, self.k, self.limit = depth, widen, k, limit
    self.clock = time.perf_counter
    self.times = []
    self._cache = {}

  def cifar10(self, root, split, transform):
    """torchvision's CIFAR10 class holding `root/split`'s images, as if downloaded."""
    import numpy as np  # pylint: disable=g-import-not-at-top
    from PIL import Image  # pylint: disable=g-import-not-at-top
    import torchvision  # pylint: disable=g-import-not-at-top
    if split not in self._cache:
      classes = sorted(os.listdir(os.path.join(root, split)))
      per_class = [sorted(glob.glob(os.path.join(root, split, name, '*'))) for name in classes]
      # Every class alike: the first `limit` images of a class-interleaved order.
      files = [(f, c) for group in itertools.zip_longest(*per_class)
               for c, f in enumerate(group) if f is not None]
      files = files[:self.limit if split == 'train' else self.limit // 10]
      images = np.stack([np.asarray(Image.open(f).convert('RGB')) for f, _ in files])
      self._cache[split] = (images, [c for _, c in files])
    ds = torchvision.datasets.CIFAR10.__new__(torchvision.datasets.CIFAR10)
    ds.root, ds.train, ds.transform, ds.target_transform = root, split == 'train', transform, None
    ds.data, ds.targets = self._cache[split]
    return ds


def _wrn_size():
  _, depth, widen = FLAGS.model.split('-')
  return int(depth), int(widen)


class Official:
  """The official code, patched, set up by its own `__main__` for one K."""

  def __init__(self, code_dir, scratch, k):
    import torch  # pylint: disable=g-import-not-at-top
    torch.set_num_threads(os.cpu_count())
    depth, widen = _wrn_size()
    self.bench = _Bench(depth, widen, k, FLAGS.train_examples)
    sys.path.insert(0, code_dir)
    from custom_models import model  # pylint: disable=g-import-not-at-top
    nat = os.path.join(scratch, f'nat{k}')
    os.makedirs(nat, exist_ok=True)
    torch.save({'net': model.WideResNet(depth, 10, widen).state_dict()},
               os.path.join(nat, 'ckpt_latest.t7'))
    argv = sys.argv
    sys.argv = ['main.py', f'--data_path={os.path.abspath(FLAGS.dataset)}', '--num_epoches=0',
                f'--batch_size={FLAGS.batch_size}', '--workers=0', '--gpu=',
                f'--log_root={scratch}/log{k}', f'--ckpt_root={scratch}/ckpt{k}',
                f'--nat_root={nat}', '--nat_file=ckpt_latest.t7']
    self.ns = {'__name__': '__main__', '__file__': os.path.join(code_dir, 'main.py'),
               '_BENCH': self.bench}
    try:
      with open(os.path.join(code_dir, 'main.py')) as f:
        code = compile(f.read(), os.path.join(code_dir, 'main.py'), 'exec')
      # With --num_epoches=0 its __main__ builds everything and trains no epoch.
      with contextlib.redirect_stdout(sys.stderr):
        exec(code, self.ns)  # pylint: disable=exec-used
    finally:
      sys.argv = argv
    # Its logger (on the root logger) reports every epoch; the timing rounds need none of it.
    logging.getLogger().setLevel(logging.WARNING)
    loader = self.ns['trainloader']
    self.batches = iter(loader)
    self.loader = loader

  def run(self, steps):
    """Images per second of `steps` official training steps."""
    batches = []
    for _ in range(steps):
      try:
        batches.append(next(self.batches))
      except StopIteration:
        self.batches = iter(self.loader)
        batches.append(next(self.batches))
    self.ns['trainloader'] = batches
    self.ns['classes_idx'].get_idx()
    self.bench.times.clear()
    with contextlib.redirect_stdout(sys.stderr):
      self.ns['train'](0)
    return steps * FLAGS.batch_size / sum(self.bench.times)


class Ours:
  """Our compiled AGKD-BML step on the same network size, K and batch."""

  def __init__(self, k, attack_dtype='float32'):
    # pylint: disable=g-import-not-at-top
    from agkd_tf import data
    from agkd_tf.data import pipeline
    # pylint: enable=g-import-not-at-top
    self.splits = data.load(f'folder:{FLAGS.dataset}', train_examples=FLAGS.train_examples,
                            test_examples=100)
    _, self.step = common.build_training('agkd_bml', FLAGS.model, self.splits, k,
                                         overrides={'attack_dtype': attack_dtype})
    self.it = iter(pipeline.train_dataset(self.splits.x_train, self.splits.y_train,
                                          FLAGS.batch_size, 0, 0).repeat())

  def run(self, steps):
    start = time.perf_counter()
    for _ in range(steps):
      float(self.step(self.it)['loss'])
    return steps * FLAGS.batch_size / (time.perf_counter() - start)


def main(argv):
  del argv
  try:
    import torch  # pylint: disable=g-import-not-at-top
    shim = import_torchvision()
  except ImportError:
    raise SystemExit('error: bench/official_throughput.py needs torch and torchvision (CPU '
                     'wheels) beside agkd_tf; they are never package dependencies') from None
  if not FLAGS.official_dir:
    raise SystemExit('error: --official_dir is required: a checkout of '
                     'https://github.com/hongw579/AGKD-BML')
  if not os.path.isdir(os.path.join(FLAGS.dataset, 'train')):
    raise SystemExit(f'error: {FLAGS.dataset} has no train/ folder (--dataset: an image folder '
                     'with train/<class>/ and test/<class>/)')
  import agkd_tf  # pylint: disable=g-import-not-at-top,unused-import
  scratch = tempfile.mkdtemp(prefix='official_throughput_')
  code_dir = os.path.join(scratch, 'code')
  os.makedirs(code_dir)
  apply_patches(FLAGS.official_dir, code_dir)
  unknown = [d for d in FLAGS.ours_attack_dtypes if d not in ('float32', 'bfloat16')]
  if unknown:
    raise SystemExit(f'error: --ours_attack_dtypes takes float32 and/or bfloat16, not {unknown}')
  rows = []
  for k in (int(v) for v in FLAGS.ks):
    official = Official(code_dir, scratch, k)
    ours = {d: Ours(k, d) for d in FLAGS.ours_attack_dtypes}
    official.run(1)  # Warm-up: oneDNN primitives on one side, tracing on the other.
    for side in ours.values():
      side.run(1)
    ips = {d: [] for d in ours}
    ips['official'] = []
    ratios = {d: [] for d in ours}
    for r in range(FLAGS.rounds):
      # Alternate which side goes first, so drifting load hits both alike.
      order = ['official'] + list(ours) if r % 2 else list(ours) + ['official']
      now = {name: (official if name == 'official' else ours[name]).run(FLAGS.steps)
             for name in order}
      for name, value in now.items():
        ips[name].append(value)
      for d in ours:
        ratios[d].append(now[d] / now['official'])
      print(f'K={k} round {r}: ' + ', '.join(f'{n} {v:.2f} img/s' for n, v in now.items()),
            flush=True)
    for d in ours:
      rows.append({'model': FLAGS.model, 'k': k, 'ours_attack_dtype': d,
                   'batch': FLAGS.batch_size, 'timed_steps': FLAGS.steps,
                   'ours_img_per_s': statistics.median(ips[d]),
                   'official_img_per_s': statistics.median(ips['official']),
                   'ratio_median': statistics.median(ratios[d]), 'ratio_min': min(ratios[d]),
                   'ratio_max': max(ratios[d]), 'goal': '>= 3'})
  commit = _official_commit(FLAGS.official_dir)
  patches = [{'file': p.path, 'why': p.why} for p in PATCHES]
  notes = (f'AGKD-BML training step, ours / the official PyTorch code (hongw579/AGKD-BML at '
           f'{commit}), CPU, the official side in float32 and ours with its attack passes in '
           f'{" or ".join(FLAGS.ours_attack_dtypes)} (the rest of our step in float32), torch {torch.__version__} with {torch.get_num_threads()} '
           f'threads, {FLAGS.rounds} alternating rounds of {FLAGS.steps} steps after one warm-up '
           f'step each, {FLAGS.train_examples} training images of {FLAGS.dataset}. The official '
           'code ran unchanged except for these run-time patches:\n\n'
           + '\n'.join(f'- `{p["file"]}`: {p["why"]}' for p in patches))
  common.write('official_throughput', rows,
               [('model', 'model'), ('K', 'k'), ('our attack dtype', 'ours_attack_dtype'),
                ('batch', 'batch'),
                ('timed steps', 'timed_steps'), ('ours img/s', 'ours_img_per_s'),
                ('official img/s', 'official_img_per_s'), ('ours / official (median)',
                                                            'ratio_median'),
                ('min', 'ratio_min'), ('max', 'ratio_max'), ('goal', 'goal')],
               notes=notes + (f'\n\nEnvironment: {shim}.' if shim else ''),
               extra={'official_commit': commit, 'torch': torch.__version__, 'patches': patches,
                      'environment': shim})
  shutil.rmtree(scratch, ignore_errors=True)
  if FLAGS.readme:
    cmd = common.command()
    lines = ['| benchmark | figure | command |', '|---|---|---|']
    for row in rows:
      met = 'met' if row['ratio_median'] >= 3 else 'not met'
      lines.append(
          f'| AGKD-BML training, ours / the official PyTorch code, {row["model"]}, K={row["k"]}, '
          f'batch {row["batch"]}, our attack passes in {row["ours_attack_dtype"]} | {row["ratio_median"]:.2f}x median ({row["ratio_min"]:.2f}-'
          f'{row["ratio_max"]:.2f} over {FLAGS.rounds} rounds; {row["ours_img_per_s"]:.2f} vs '
          f'{row["official_img_per_s"]:.2f} img/s); goal 3x {met} | `{cmd}` |')
    common.readme_block('official_throughput', lines)


if __name__ == '__main__':
  define_flags()
  app.run(main)
