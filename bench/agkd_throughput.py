r"""AGKD-BML training throughput against Madry AT with PGD-7, and where the AGKD-BML step goes.

Wang et al., ICCV 2021, supplementary Table 4: AGKD-BML with K = 2 took 528 s per epoch against
AT-7's 502 s (1.05x). Both methods train the same network (fresh weights, the student starting
from an untrained teacher of the same architecture: speed does not depend on the weights), on the
same augmented batches, in the same process, float32 on the CPU, alternating in rounds. The
figure is the median over rounds of AT-7 / AGKD-BML images per second, i.e. AGKD-BML's cost per
image relative to AT-7 (goal: <= 1.05).

The profile times the parts of one AGKD-BML step as separately compiled functions on the same
batch: the forward attack (most-confusing labels + targeted PGD-K), the backward sample (in-graph
class-bank draw + targeted PGD-K), the teacher's forward pass, and the whole step; the rest of the
step (one BN-train forward/backward over [x1', x1, x2'], the loss terms and the update) is the
whole step minus the parts.

Why 1.05 is out of reach of the faithful recipe on a CPU: count, per training image, a forward
pass as 1 unit and each backward pass (to the input, to the weights) as about 1 more. AT-7 costs
7 x 2 (attack steps) + 3 (the training pass) = 17 units. AGKD-BML with K = 2 costs 1 (the
most-confusing label) + 2 x 2 x 2 (two targeted PGD-2 attacks) + 2 (the teacher on x1 and x2) +
3 x 3 (one training pass over x1', x1 and x2') = 20 units, 1.18x. Measured ratios sit at or below
that count. The paper's 1.05 was measured on a V100; it does not say how, so we cannot tell
what closed the gap there.

  python bench/agkd_throughput.py [--models=cnn-cpu,wrn-16-4] [--steps=cnn-cpu:10,wrn-16-4:3]
"""

import os
import statistics
import sys
import time

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import agkd_tf  # pylint: disable=g-import-not-at-top,unused-import,wrong-import-position
import tensorflow as tf  # pylint: disable=g-import-not-at-top,wrong-import-position

from agkd_tf import data  # pylint: disable=g-import-not-at-top,wrong-import-position
from agkd_tf.data import pipeline  # pylint: disable=g-import-not-at-top,wrong-import-position
from bench import common  # pylint: disable=g-import-not-at-top,wrong-import-position

flags.DEFINE_list('models', ['cnn-cpu', 'wrn-16-4'], 'Networks to measure.')
flags.DEFINE_list('steps', ['cnn-cpu:10', 'wrn-16-4:3'], 'Timed steps per round and side, per '
                  'model (MODEL:N).')
flags.DEFINE_integer('rounds', 2, 'Alternating rounds (even, so each side goes first equally).')
flags.DEFINE_integer('batch_size', 128, 'Batch size.')
flags.DEFINE_integer('agkd_steps', 2, 'AGKD-BML attack steps K (Table 4: 2).')
flags.DEFINE_integer('at_steps', 7, 'AT attack steps (Table 4: 7).')
flags.DEFINE_string('dataset', 'folder:../shared/data/cifar10-jpeg',
                    'Data (falls back to synthetic:32 when the shared folder is absent).')
FLAGS = flags.FLAGS


def _runner(method_name, model_name, splits, attack_steps, steps):
  method, step = common.build_training(method_name, model_name, splits, attack_steps)

  def run(epoch):
    it = iter(pipeline.train_dataset(splits.x_train, splits.y_train, FLAGS.batch_size, epoch, 0))
    float(step(it)['loss'])  # Warm-up (tracing) outside the timed window.
    start = time.perf_counter()
    for _ in range(steps):
      float(step(it)['loss'])
    return steps * FLAGS.batch_size / (time.perf_counter() - start)
  return method, step, run


def _time(fn, *args, repeats=3):
  fn(*args)  # Trace.
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    out = fn(*args)
    tf.nest.map_structure(lambda t: t.numpy() if hasattr(t, 'numpy') else t, out)
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def _profile(method, step, splits):
  """Seconds per batch of the parts of an AGKD-BML step (median of 3)."""
  x, y = next(iter(pipeline.train_dataset(splits.x_train, splits.y_train, FLAGS.batch_size, 9,
                                          0)))
  forward = tf.function(method.forward_adversarial)
  y_mc, _ = forward(x, y)

  @tf.function
  def backward(y_mc, y):
    x2, _ = method.draw_backward_samples(y_mc)
    return method._pgd(x2, y, stream=2)  # pylint: disable=protected-access

  teacher = tf.function(lambda v: method.teacher(v, training=False)['feature_map'])
  x2 = tf.concat([x, x], 0)
  ds = tf.data.Dataset.from_tensors((x, y)).repeat()
  it = iter(ds)
  parts = {
      'forward attack (y_mc + targeted PGD)': _time(forward, x, y),
      'backward sample (bank draw + targeted PGD)': _time(backward, y_mc, y),
      'teacher forward [x1, x2]': _time(teacher, x2),
      'whole step': _time(lambda: step(it)),
  }
  parts['student forward/backward on [x1\', x1, x2\'] + losses + update'] = (
      parts['whole step'] - sum(v for k, v in parts.items() if k != 'whole step'))
  return parts


def main(argv):
  del argv
  steps_of = dict(s.split(':') for s in FLAGS.steps)
  most = max(int(v) for v in steps_of.values())
  n = FLAGS.batch_size * (most + 2) * 2
  try:
    splits = data.load(FLAGS.dataset, train_examples=n, test_examples=100)
  except agkd_tf.core.errors.UserError:
    splits = data.load('synthetic:32', train_examples=n, test_examples=100)
  rows, profiles = [], []
  for name in FLAGS.models:
    steps = int(steps_of.get(name, 3))
    agkd_method, agkd_step, agkd = _runner('agkd_bml', name, splits, FLAGS.agkd_steps, steps)
    _, _, at = _runner('at', name, splits, FLAGS.at_steps, steps)
    ratios, agkd_ips, at_ips = [], [], []
    for r in range(FLAGS.rounds):
      # Alternate which side goes first so drifting machine load hits both alike.
      if r % 2 == 0:
        a, b = agkd(r), at(r)
      else:
        b, a = at(r), agkd(r)
      agkd_ips.append(a)
      at_ips.append(b)
      ratios.append(b / a)
      print(f'{name} round {r}: AGKD-BML K={FLAGS.agkd_steps} {a:.1f} img/s, '
            f'AT-{FLAGS.at_steps} {b:.1f} img/s, cost ratio {b / a:.3f}', flush=True)
    rows.append({'model': name, 'batch': FLAGS.batch_size, 'timed_steps': steps,
                 'agkd_img_per_s': statistics.median(agkd_ips),
                 'at_img_per_s': statistics.median(at_ips),
                 'cost_ratio_median': statistics.median(ratios), 'cost_ratio_min': min(ratios),
                 'cost_ratio_max': max(ratios), 'goal': '<= 1.05'})
    parts = _profile(agkd_method, agkd_step, splits)
    whole = parts['whole step']
    for part, seconds in parts.items():
      profiles.append({'model': name, 'part': part, 'seconds_per_batch': seconds,
                       'share': seconds / whole})
      print(f'{name} profile: {part}: {seconds:.3f} s ({100 * seconds / whole:.0f}%)', flush=True)
  common.write('agkd_throughput', rows,
               [('model', 'model'), ('batch', 'batch'), ('timed steps', 'timed_steps'),
                (f'AGKD-BML K={FLAGS.agkd_steps} img/s', 'agkd_img_per_s'),
                (f'AT-{FLAGS.at_steps} img/s', 'at_img_per_s'),
                ('cost ratio (median)', 'cost_ratio_median'), ('min', 'cost_ratio_min'),
                ('max', 'cost_ratio_max'), ('goal', 'goal')],
               notes=(f'Training, float32, CPU, {FLAGS.rounds} alternating rounds, data '
                      f'{splits.name}. Cost ratio = AT-{FLAGS.at_steps} img/s / AGKD-BML img/s: '
                      'the time AGKD-BML spends per image relative to AT (paper: 528/502 = '
                      '1.05).\n\nProfile of one AGKD-BML step (seconds per batch, median of 3; '
                      'the student pass is the whole step minus the other parts):\n\n'
                      + '\n'.join(f'- {p["model"]}: {p["part"]}: {p["seconds_per_batch"]:.3f} s '
                                  f'({100 * p["share"]:.0f}%)' for p in profiles)),
               extra={'profile': profiles})


if __name__ == '__main__':
  app.run(main)
