r"""Our AutoAttack against the official one, image by image, on the same SavedModel and images.

Croce and Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", ICML 2020; official code github.com/fra31/auto-attack, on PyPI as
`pyautoattack`. Both run the standard L-inf version (APGD-CE, APGD-T with 9 targets, FAB-T,
Square with 5000 queries) on the same class-balanced test images that `python -m agkd_tf.evaluate
--num_examples=N` uses, for each SavedModel given. The official attacks are PyTorch; they reach
the TensorFlow model through a gradient bridge (`TFBridge`): the forward pass runs the SavedModel
on the images (NCHW -> NHWC), and the backward pass returns TensorFlow's vector-Jacobian product
for the gradient PyTorch hands back. The bridge recomputes the forward pass inside its backward
pass, so the official side pays about one extra forward pass per gradient; the script measures that
overhead on one batch and reports it beside the times.

Written per model: robust accuracy of each side, the points each attack removed (in cascade
order), each attack's time, the images robust under one side and broken by the other, and the
share judged alike. Goals (issue 19): robust accuracy within 0.5 points, at least 98% of images
judged alike, our time at most 0.5x the official.

torch and pyautoattack are never package dependencies: run this in an environment that has the
CPU wheel of torch and `pip install pyautoattack` beside agkd_tf.

  python bench/aa_parity.py --models=at=PATH/export,agkd_bml=PATH/export \
      --dataset=folder:../shared/data/cifar10-jpeg --num_examples=1000 [--readme]

On a 2-core CPU 1,000 images take from half an hour to hours per model, so the images can be split into --chunks
strided, class-balanced parts (chunk i holds images i, i + chunks, ...; the folder loaders list
images class by class). Both sides run on one chunk, one after the other, so each chunk's time
ratio is measured under the same conditions; with --state_dir each finished chunk is kept, a later
run with the same settings takes it up, and --max_chunks bounds the new chunks of one run. The
table counts the finished chunks only and says how many images that is out of --num_examples.
"""

import json
import logging
import os
import re
import statistics
import sys
import time

from absl import app
from absl import flags
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common  # pylint: disable=g-import-not-at-top,wrong-import-position

FLAGS = flags.FLAGS
ATTACKS = ('apgd-ce', 'apgd-t', 'fab-t', 'square')


def define_flags():
  """Defines the flags when run as a script (tests import it beside benchmarks' same names)."""
  flags.DEFINE_list('models', None, 'NAME=SAVED_MODEL_DIR pairs, e.g. at=runs/at/export.')
  flags.DEFINE_string('dataset', 'folder:../shared/data/cifar10-jpeg', 'Test images.')
  flags.DEFINE_integer('num_examples', 1000, 'Class-balanced test images (as agkd_tf.evaluate).')
  flags.DEFINE_float('eps', 8 / 255, 'L-inf budget in [0, 1] pixel units.')
  flags.DEFINE_integer('batch_size', 250, 'Attack batch size on both sides (official: 250).')
  flags.DEFINE_integer('seed', 0, 'Seed of both sides (and of the image selection).')
  flags.DEFINE_bool('readme', False, 'Also rewrite the README block aa_parity.')
  flags.DEFINE_integer('chunks', 1, 'Strided, class-balanced parts the images are split into; '
                       'both sides run on one part, then the next.', lower_bound=1)
  flags.DEFINE_string('state_dir', None, 'Keeps each finished chunk here (one JSON file per model '
                      'and chunk) and takes up the ones a run with the same settings finished.')
  flags.DEFINE_integer('max_chunks', 0, 'New chunks to run per model in this invocation (0: all '
                       'that are left).', lower_bound=0)
  flags.DEFINE_bool('run', True, 'Run the chunks still to do; --norun tables the kept ones only.')


# The official code logs one line per attack of the cascade at DEBUG level.
_AFTER = re.compile(r'robust accuracy after (\S+): ([\d.]+)% \(total time ([\d.]+) s\)')


def parse_official_log(lines):
  """{attack: (robust accuracy in [0, 1], cumulative seconds)} from the official log lines."""
  out = {}
  for line in lines:
    m = _AFTER.search(line)
    if m:
      out[m.group(1).lower()] = (float(m.group(2)) / 100, float(m.group(3)))
  return out


def make_bridge(logits_fn):
  """A torch module whose forward runs `logits_fn` (NHWC TF) and whose backward asks TF."""
  # pylint: disable=g-import-not-at-top
  import tensorflow as tf
  import torch
  # pylint: enable=g-import-not-at-top

  @tf.function(reduce_retracing=True)
  def logits(x):
    return logits_fn(x)

  @tf.function(reduce_retracing=True)
  def vjp(x, g):
    with tf.GradientTape() as tape:
      tape.watch(x)
      out = logits_fn(x)
    return tape.gradient(out, x, output_gradients=g)

  def to_tf(x):
    return tf.constant(np.ascontiguousarray(x.detach().cpu().numpy().transpose(0, 2, 3, 1)))

  class _Logits(torch.autograd.Function):

    @staticmethod
    def forward(ctx, x):  # pylint: disable=arguments-differ
      ctx.save_for_backward(x)
      return torch.from_numpy(logits(to_tf(x)).numpy())

    @staticmethod
    def backward(ctx, g):  # pylint: disable=arguments-differ
      (x,) = ctx.saved_tensors
      grad = vjp(to_tf(x), tf.constant(g.detach().cpu().numpy())).numpy()
      return torch.from_numpy(np.ascontiguousarray(grad.transpose(0, 3, 1, 2)))

  class TFBridge(torch.nn.Module):

    def forward(self, x):  # pylint: disable=arguments-differ
      return _Logits.apply(x)

  return TFBridge().eval()


def bridge_overhead(bridge, logits_fn, x, y, repeats=3):
  """Seconds of one CE gradient through the bridge / natively in TensorFlow, on one batch."""
  # pylint: disable=g-import-not-at-top
  import tensorflow as tf
  import torch
  # pylint: enable=g-import-not-at-top

  @tf.function
  def native(x, y):
    with tf.GradientTape() as tape:
      tape.watch(x)
      loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits_fn(x)))
    return tape.gradient(loss, x)

  def bridged():
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).requires_grad_()
    loss = torch.nn.functional.cross_entropy(bridge(xt), torch.from_numpy(y.astype(np.int64)),
                                             reduction='sum')
    return torch.autograd.grad(loss, [xt])[0]

  xs, ys = tf.constant(x), tf.constant(y)
  times = {'bridge': [], 'native': []}
  native(xs, ys)
  bridged()
  for _ in range(repeats):
    start = time.perf_counter()
    native(xs, ys).numpy()
    times['native'].append(time.perf_counter() - start)
    start = time.perf_counter()
    bridged()
    times['bridge'].append(time.perf_counter() - start)
  return statistics.median(times['bridge']) / statistics.median(times['native'])


def run_ours(model, x, y):
  from agkd_tf.attacks import autoattack  # pylint: disable=g-import-not-at-top
  aa = autoattack.AutoAttack(model.logits_fn, FLAGS.eps, version='standard', seed=FLAGS.seed,
                             num_classes=model.num_classes, log=None)
  start = time.perf_counter()
  x_adv, report = aa.run(x, y, batch_size=FLAGS.batch_size)
  total = time.perf_counter() - start
  robust = aa._predict(x_adv, FLAGS.batch_size) == y  # pylint: disable=protected-access
  return robust, {'removed': {a: int(report['flipped'].get(a, 0)) for a in ATTACKS},
                  'time_s': {a: float(report['time_s'].get(a, 0.0)) for a in ATTACKS},
                  'total_s': total,
                  'max_perturbation': float(np.abs(x_adv - x).max())}


def run_official(bridge, x, y):
  """The official standard AutoAttack on CPU; robust flags and its per-attack log."""
  # pylint: disable=g-import-not-at-top
  import torch
  from pyautoattack import AutoAttack
  # pylint: enable=g-import-not-at-top
  lines = []

  class _Keep(logging.Handler):

    def emit(self, record):
      lines.append(record.getMessage())

  logger = logging.getLogger('auto-attack')
  handler = _Keep(level=logging.DEBUG)
  logger.addHandler(handler)
  logger.setLevel(logging.DEBUG)
  logger.propagate = False
  try:
    aa = AutoAttack(bridge, norm='Linf', eps=FLAGS.eps, version='standard', device='cpu',
                    seed=FLAGS.seed)
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    yt = torch.from_numpy(y.astype(np.int64))
    start = time.perf_counter()
    x_adv, y_adv = aa.run_standard_evaluation(xt, yt, batch_size=FLAGS.batch_size)
    total = time.perf_counter() - start
  finally:
    logger.removeHandler(handler)
  after = parse_official_log(lines)
  n = len(y)
  removed, time_s = {}, {}
  # Removals are differences of the cascade's accuracies, from the initial (clean) one on.
  prev_acc = next((float(m.group(1)) / 100 for m in (re.search(r'initial accuracy: ([\d.]+)%', l)
                                                      for l in lines) if m), None)
  prev_t = 0.0
  for a in ATTACKS:
    if a in after:
      acc, t = after[a]
      removed[a] = int(round((prev_acc - acc) * n))
      time_s[a] = t - prev_t
      prev_acc, prev_t = acc, t
    else:
      removed[a], time_s[a] = 0, 0.0
  robust = y_adv.numpy() == y
  return robust, {'removed': removed, 'time_s': time_s, 'total_s': total,
                  'max_perturbation': float((x_adv - xt).abs().max()), 'log': lines}


def chunk_indices(n, chunks):
  """Strided parts of range(n): part i holds i, i + chunks, ... (class-balanced on sorted data)."""
  return [np.arange(i, n, chunks) for i in range(min(chunks, n))]


def _bits(text):
  return np.array([c == '1' for c in text], dtype=bool)


def _text(bits):
  return ''.join('1' if b else '0' for b in bits)


def run_chunk(model, bridge, x, y, idx):
  """Both sides on images idx (ours first); a JSON-ready record with per-image verdicts."""
  xc, yc = x[idx], y[idx]
  load = os.getloadavg()[0]
  overhead = bridge_overhead(bridge, model.logits_fn, xc[:FLAGS.batch_size],
                             yc[:FLAGS.batch_size].astype(np.int32))
  ours, ours_info = run_ours(model, xc, yc.astype(np.int32))
  official, off_info = run_official(bridge, xc, yc)
  return {'indices': idx.tolist(), 'ours': _text(ours), 'official': _text(official),
          'ours_s': ours_info['total_s'], 'official_s': off_info['total_s'],
          'ours_removed': ours_info['removed'], 'official_removed': off_info['removed'],
          'ours_time_s': ours_info['time_s'], 'official_time_s': off_info['time_s'],
          'ours_max_perturbation': ours_info['max_perturbation'],
          'official_max_perturbation': off_info['max_perturbation'],
          'bridge_overhead': overhead, 'load_before': load, 'load_after': os.getloadavg()[0],
          'finished': time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}


def aggregate(records, total):
  """One table row from finished chunk records (image indices into the full selection)."""
  n = sum(len(r['indices']) for r in records)
  index = np.concatenate([np.asarray(r['indices'], dtype=np.int64) for r in records])
  ours = np.concatenate([_bits(r['ours']) for r in records])
  official = np.concatenate([_bits(r['official']) for r in records])
  order = np.argsort(index, kind='stable')
  index, ours, official = index[order], ours[order], official[order]
  ours_s = sum(r['ours_s'] for r in records)
  official_s = sum(r['official_s'] for r in records)
  row = {
      'images': n, 'images_of': f'{n}' if n == total else f'{n} of {total}',
      'chunks_done': len(records),
      'ours_robust': 100 * float(ours.mean()), 'official_robust': 100 * float(official.mean()),
      'robust_gap': 100 * float(ours.mean() - official.mean()),
      'alike': 100 * float((ours == official).mean()),
      'robust_only_ours': int((ours & ~official).sum()),
      'robust_only_official': int((official & ~ours).sum()),
      'ours_s': ours_s, 'official_s': official_s, 'time_ratio': ours_s / official_s,
      'chunk_time_ratios': [r['ours_s'] / r['official_s'] for r in records],
      'bridge_overhead': statistics.median(r['bridge_overhead'] for r in records),
      'ours_removed': {a: sum(r['ours_removed'][a] for r in records) for a in ATTACKS},
      'official_removed': {a: sum(r['official_removed'][a] for r in records) for a in ATTACKS},
      'ours_time_s': {a: sum(r['ours_time_s'][a] for r in records) for a in ATTACKS},
      'official_time_s': {a: sum(r['official_time_s'][a] for r in records) for a in ATTACKS},
      'only_ours_indices': index[ours & ~official].tolist(),
      'only_official_indices': index[official & ~ours].tolist(),
      'ours_max_perturbation': max(r['ours_max_perturbation'] for r in records),
      'official_max_perturbation': max(r['official_max_perturbation'] for r in records),
      'load_average': [[r['load_before'], r['load_after']] for r in records],
  }
  row['removed'] = ', '.join(f'{a} {row["ours_removed"][a]}/{row["official_removed"][a]}'
                             for a in ATTACKS)
  return row


def _model_key(path):
  """A SavedModel path as the settings keep it: relative to the repository, so clones agree."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  return os.path.relpath(os.path.abspath(path), root)


def _chunk_path(name, i):
  return os.path.join(FLAGS.state_dir, f'{name}.chunk{i}.json')


def _load_chunk(name, i, settings):
  """A finished chunk kept by an earlier run with the same settings, or None."""
  if not FLAGS.state_dir or not os.path.isfile(_chunk_path(name, i)):
    return None
  with open(_chunk_path(name, i)) as f:
    record = json.load(f)
  kept = dict(record.get('settings', {}))
  kept['saved_model'] = _model_key(kept.get('saved_model', ''))
  if kept != settings:
    print(f'{name}: chunk {i} in {FLAGS.state_dir} has other settings; running it again')
    return None
  if record['settings'] != settings:  # Kept with an absolute path: keep it portable from now.
    record['settings'] = settings
    _save_chunk(name, i, record)
  return record


def _save_chunk(name, i, record):
  if not FLAGS.state_dir:
    return
  os.makedirs(FLAGS.state_dir, exist_ok=True)
  tmp = _chunk_path(name, i) + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(record, f)
  os.replace(tmp, _chunk_path(name, i))  # A chunk file is whole or absent.


def main(argv):
  del argv
  try:
    import torch  # pylint: disable=g-import-not-at-top
    import pyautoattack  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise SystemExit('error: bench/aa_parity.py needs torch (CPU wheel) and pyautoattack beside '
                     'agkd_tf; they are never package dependencies') from None
  if not FLAGS.models:
    raise SystemExit('error: --models is required: NAME=SAVED_MODEL_DIR[,...]')
  # pylint: disable=g-import-not-at-top
  from agkd_tf import data
  from agkd_tf import evaluation
  # pylint: enable=g-import-not-at-top
  torch.set_num_threads(os.cpu_count())
  splits = data.load(FLAGS.dataset, None, 1, FLAGS.num_examples, FLAGS.seed)
  # As the evaluator reads them: uint8 pixels to [0, 1].
  x = splits.x_test.astype(np.float32) / (255.0 if splits.x_test.dtype == np.uint8 else 1.0)
  y = np.asarray(splits.y_test).astype(np.int64)
  rows = []
  for pair in FLAGS.models:
    name, _, path = pair.partition('=')
    model = evaluation.load_model(saved_model=path)
    bridge = make_bridge(model.logits_fn)
    settings = {'model': name, 'saved_model': _model_key(path), 'dataset': FLAGS.dataset,
                'num_examples': len(y), 'eps': FLAGS.eps, 'batch_size': FLAGS.batch_size,
                'seed': FLAGS.seed, 'chunks': FLAGS.chunks}
    done, new = [], 0
    for i, idx in enumerate(chunk_indices(len(y), FLAGS.chunks)):
      record = _load_chunk(name, i, settings)
      if record is None:
        if not FLAGS.run or (FLAGS.max_chunks and new >= FLAGS.max_chunks):
          continue
        record = run_chunk(model, bridge, x, y, idx)
        record.update(settings=settings, chunk=i)
        _save_chunk(name, i, record)
        new += 1
        print(f'{name}: chunk {i + 1}/{FLAGS.chunks} ({len(idx)} images): ours '
              f'{100 * np.mean(_bits(record["ours"])):.1f}% official '
              f'{100 * np.mean(_bits(record["official"])):.1f}%, time '
              f'{record["ours_s"] / record["official_s"]:.2f}x', flush=True)
      done.append(record)
    if not done:
      print(f'{name}: no chunk finished yet', flush=True)
      continue
    row = aggregate(done, len(y))
    row.update(model=name, saved_model=path)
    rows.append(row)
    print(f'{name}: {row["images"]} of {len(y)} images: ours {row["ours_robust"]:.1f}% official '
          f'{row["official_robust"]:.1f}%, alike {row["alike"]:.1f}%, time '
          f'{row["time_ratio"]:.2f}x', flush=True)
  if not rows:
    raise SystemExit('error: no chunk finished for any model; nothing to write')
  version = getattr(pyautoattack, '__version__', None) or _dist_version('pyautoattack')
  common.write(
      'aa_parity', rows,
      [('model', 'model'), ('images', 'images_of'), ('ours robust %', 'ours_robust'),
       ('official robust %', 'official_robust'), ('gap (points)', 'robust_gap'),
       ('judged alike %', 'alike'), ('robust only ours', 'robust_only_ours'),
       ('robust only official', 'robust_only_official'),
       ('removed per attack, ours/official', 'removed'), ('ours s', 'ours_s'),
       ('official s', 'official_s'), ('time ours / official', 'time_ratio'),
       ('bridge cost / native gradient', 'bridge_overhead')],
      notes=(f'Standard L-inf AutoAttack, eps {FLAGS.eps:.5f}, batch {FLAGS.batch_size}, seed '
             f'{FLAGS.seed}, on {FLAGS.num_examples} class-balanced test images of '
             f'{FLAGS.dataset}, in {FLAGS.chunks} strided chunk(s), both sides on one chunk '
             'before the next (the images column counts the finished chunks); ours (agkd_tf.attacks.autoattack) against the official '
             f'pyautoattack {version} with torch {torch.__version__} on the CPU, through a '
             'TensorFlow-to-PyTorch gradient bridge that recomputes the forward pass in its '
             'backward pass (its cost per CE gradient over a native TensorFlow gradient is in the '
             'last column). Goals: gap within 0.5 points, at least 98% judged alike, time at most '
             '0.5x.'),
      extra={'pyautoattack': version, 'torch': torch.__version__})
  if FLAGS.readme:
    cmd = common.command()
    lines = ['| benchmark | figure | command |', '|---|---|---|']
    for r in rows:
      lines.append(
          f'| AutoAttack (standard), ours / the official pyautoattack, {r["model"]}, '
          f'{r["images_of"]} images | robust {r["ours_robust"]:.1f}% vs {r["official_robust"]:.1f}%'
          f'; {r["alike"]:.1f}% judged alike ({r["robust_only_ours"]} robust only under ours, '
          f'{r["robust_only_official"]} only under the official); time {r["time_ratio"]:.2f}x '
          f'({r["ours_s"]:.0f} vs {r["official_s"]:.0f} s) | `{cmd}` |')
    common.readme_block('aa_parity', lines)


def _dist_version(name):
  from importlib import metadata  # pylint: disable=g-import-not-at-top
  try:
    return metadata.version(name)
  except metadata.PackageNotFoundError:
    return 'unknown'


if __name__ == '__main__':
  define_flags()
  app.run(main)
