r"""TensorFlow's oneDNN kernels on or off: what `import agkd_tf` turning them on is worth.

TensorFlow enables its oneDNN CPU kernels by default only on CPUs with AVX-512 VNNI and newer
(the line "oneDNN custom operations are on" at import says so); on an AVX2 CPU it uses its own
Eigen kernels unless TF_ENABLE_ONEDNN_OPTS=1. `import agkd_tf` sets TF_ENABLE_ONEDNN_OPTS=1
when the user has not set it. The variable is read when TensorFlow loads, so the two settings
cannot share a process: this script runs one child process per setting, alternating the order
in each round, and reports each model's img/s with oneDNN on over off (median of the rounds):

  - PGD-10 (eps 8/255, step 2/255, random start) on a batch of 256, our compiled attack;
  - one AGKD-BML K = 2 training step (batch 128) and one AT-10 step, as bench/agkd_throughput.py
    builds them, on synthetic images (speed does not depend on the pixels).

It also checks that the settings compute the same maths: the logits of the same seeded network
on the same seeded images, whose largest difference between the settings it reports.

  python bench/onednn.py [--models=cnn-cpu,wrn-16-4] [--rounds=2]
"""

import json
import os
import statistics
import subprocess
import sys
import time

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common  # pylint: disable=g-import-not-at-top,wrong-import-position

flags.DEFINE_list('models', ['cnn-cpu', 'wrn-16-4'], 'Networks to measure.')
flags.DEFINE_integer('rounds', 2, 'Alternating rounds (one child process per setting each).')
flags.DEFINE_list('steps', ['cnn-cpu:4', 'wrn-16-4:1'], 'Timed calls of each workload per child, '
                  'per model (MODEL:N; 2 for models not listed).')
flags.DEFINE_list('workloads', ['pgd10', 'agkd_bml_k2_step', 'at10_step'], 'What to time: '
                  'pgd10, agkd_bml_k2_step and/or at10_step.')
flags.DEFINE_string('child', None, 'Internal: measure MODEL in this process and print JSON.')
flags.DEFINE_string('name', 'onednn', 'Result file name under bench/results/.')
FLAGS = flags.FLAGS
SETTINGS = ('0', '1')  # TF_ENABLE_ONEDNN_OPTS: off, on.
WORKLOADS = ('pgd10', 'agkd_bml_k2_step', 'at10_step')


def _steps(model):
  per_model = dict(s.split(':') for s in FLAGS.steps)
  return int(per_model.get(model, 2))


def _timed(fn, calls):
  """Median seconds of `calls` calls of fn (after one warm-up call that traces it)."""
  fn()
  times = []
  for _ in range(calls):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def child(model):
  """Measures every workload on `model` with this process's oneDNN setting; prints JSON."""
  # pylint: disable=g-import-not-at-top
  import agkd_tf  # pylint: disable=unused-import  (Keras backend; oneDNN as the env says)
  import keras
  import tensorflow as tf
  from agkd_tf import attacks
  from agkd_tf import data
  from agkd_tf import models
  # pylint: enable=g-import-not-at-top
  calls = _steps(model)
  out = {'setting': os.environ.get('TF_ENABLE_ONEDNN_OPTS')}
  keras.utils.set_random_seed(0)
  network = models.build(model, (32, 32, 3), 10)
  x = tf.random.stateless_uniform([256, 32, 32, 3], [0, 1])
  y = tf.random.stateless_uniform([256], [0, 2], maxval=10, dtype=tf.int32)
  out['logits'] = network(x[:8], training=False)['logits'].numpy().tolist()

  @tf.function(reduce_retracing=True)
  def pgd(x, y):
    return attacks.pgd(lambda v: network(v, training=False)['logits'], x, y, 8 / 255, 2 / 255,
                       10, seed=tf.constant([0, 1]))

  if 'pgd10' in FLAGS.workloads:
    out['pgd10'] = 256 / _timed(lambda: pgd(x, y).numpy(), calls)
  splits = data.load('synthetic:32', None, 512, 64, 0)
  for key, method, steps in (('agkd_bml_k2_step', 'agkd_bml', 2), ('at10_step', 'at', 10)):
    if key not in FLAGS.workloads:
      continue
    _, step_fn = common.build_training(method, model, splits, steps)
    batches = tf.data.Dataset.from_tensor_slices(
        (tf.cast(splits.x_train, tf.float32) / 255.0, splits.y_train)).batch(
            128, drop_remainder=True).repeat()
    iterator = iter(batches)
    out[key] = 128 / _timed(lambda: tf.nest.map_structure(  # pylint: disable=cell-var-from-loop
        lambda t: t.numpy(), step_fn(iterator)), calls)  # pylint: disable=cell-var-from-loop
  print('RESULT ' + json.dumps(out), flush=True)


def _run_child(model, setting):
  env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS=setting)
  proc = subprocess.run([sys.executable, os.path.abspath(__file__), f'--child={model}',
                         f'--steps={",".join(FLAGS.steps)}',
                         f'--workloads={",".join(FLAGS.workloads)}'], env=env, capture_output=True,
                        text=True, check=False)
  lines = [l for l in proc.stdout.splitlines() if l.startswith('RESULT ')]
  if proc.returncode or not lines:
    raise RuntimeError(f'child {model} TF_ENABLE_ONEDNN_OPTS={setting} failed:\n'
                       f'{proc.stderr[-3000:]}')
  return json.loads(lines[-1][len('RESULT '):])


def main(argv):
  del argv
  unknown = [w for w in FLAGS.workloads if w not in WORKLOADS]
  if unknown:
    raise app.UsageError(f'unknown workloads {unknown}; valid: {", ".join(WORKLOADS)}')
  if FLAGS.child:
    child(FLAGS.child)
    return
  import numpy as np  # pylint: disable=g-import-not-at-top
  rows = []
  for model in FLAGS.models:
    runs = {s: [] for s in SETTINGS}
    for r in range(FLAGS.rounds):
      for setting in SETTINGS if r % 2 == 0 else SETTINGS[::-1]:
        runs[setting].append(_run_child(model, setting))
        print(f'{model} round {r + 1} oneDNN {"on" if setting == "1" else "off"}: ' + ', '.join(
            f'{w} {runs[setting][-1][w]:.1f} img/s' for w in FLAGS.workloads), flush=True)
    row = {'model': model, 'timed_calls': _steps(model), 'rounds': FLAGS.rounds}
    for w in FLAGS.workloads:
      ratios = [on[w] / off[w] for on, off in zip(runs['1'], runs['0'])]
      row[f'{w}_off'] = round(statistics.median(r[w] for r in runs['0']), 2)
      row[f'{w}_on'] = round(statistics.median(r[w] for r in runs['1']), 2)
      row[f'{w}_ratio'] = round(statistics.median(ratios), 3)
    diff = np.abs(np.array(runs['1'][0]['logits']) - np.array(runs['0'][0]['logits'])).max()
    row['max_logit_diff'] = f'{diff:.1e}'  # Rounding-sized: three decimals would show 0.
    rows.append(row)
  columns = [('model', 'model'), ('timed calls', 'timed_calls'), ('rounds', 'rounds')]
  for w, label in zip(WORKLOADS, ('PGD-10', 'AGKD-BML K=2 step', 'AT-10 step')):
    if w not in FLAGS.workloads:
      continue
    columns += [(f'{label} off img/s', f'{w}_off'), (f'{label} on img/s', f'{w}_on'),
                (f'{label} on / off', f'{w}_ratio')]
  columns.append(('max |logit difference|', 'max_logit_diff'))
  notes = ('TF_ENABLE_ONEDNN_OPTS=1 (on, what `import agkd_tf` sets when the variable is unset) '
           'against 0 (off: TensorFlow\'s own kernels, its default on CPUs without AVX-512 VNNI), '
           f'one child process per setting, alternating, {FLAGS.rounds} rounds, medians; float32; '
           'PGD-10 at batch 256, training steps at batch 128 on synthetic 32x32 images. '
           '"max |logit difference|": the same seeded network and images under both settings.')
  common.write(FLAGS.name, rows, columns, notes=notes)


if __name__ == '__main__':
  app.run(main)
