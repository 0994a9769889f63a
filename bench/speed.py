r"""One run, one table: every speed ratio of the package, and how close it comes to the peak.

It runs the other benchmarks with short settings (each one still times its two sides alternately
in one process, so every ratio is same-process) into a scratch folder, so their full results in
bench/results/ stay as they are, and collects:

- natural training, our loop vs `model.fit` (bench/train_throughput.py);
- PGD-20, our compiled attack vs cleverhans (bench/attack_throughput.py);
- AGKD-BML (K = 2) vs AT-7, cost per image (bench/agkd_throughput.py; Wang et al., ICCV 2021,
  supplementary Table 4);
- AutoAttack's wall time on a trained run (`python -m agkd_tf.evaluate --attacks=aa`).

Fraction of peak: the peak is a large float32 matmul timed in this process; a workload's FLOP
rate is its images/sec times the network's forward FLOPs (TensorFlow's profiler on the forward
graph) times its pass count per image, counting a forward pass as 1 and each backward pass (to the
input, to the weights) as about 1 more: natural training 3, PGD-20 40, AT-7 17, AGKD-BML K=2 20.

  python bench/speed.py [--model=cnn-cpu] [--aa_run=RUN --aa_examples=100]
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common  # pylint: disable=g-import-not-at-top,wrong-import-position

flags.DEFINE_string('model', 'cnn-cpu', 'Network of every timed workload.')
flags.DEFINE_list('parts', ['train', 'attack', 'agkd', 'aa'], 'Which ratios to collect.')
flags.DEFINE_integer('train_batch', 128, 'Batch of the training benchmarks.')
flags.DEFINE_integer('attack_batch', 256, 'Batch of the PGD-20 benchmark.')
flags.DEFINE_integer('rounds', 2, 'Alternating rounds of each benchmark.')
flags.DEFINE_string('aa_run', None, 'A trained run for the AutoAttack time (skipped without).')
flags.DEFINE_integer('aa_examples', 100, 'Test images of the AutoAttack time.')
flags.DEFINE_integer('matmul_size', 2048, 'Side of the square matmul that measures the peak.')
FLAGS = flags.FLAGS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Forward-pass units per image (see the module docstring).
UNITS = {'natural': 3, 'pgd20': 40, 'at7': 17, 'agkd2': 20}


def _bench(script, args, scratch):
  """Runs bench/<script>.py into `scratch`; returns its JSON result."""
  env = dict(os.environ, AGKD_BENCH_RESULTS=scratch)
  cmd = [sys.executable, os.path.join(ROOT, 'bench', f'{script}.py'), *args]
  print('$ ' + ' '.join(cmd), flush=True)
  proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
  if proc.returncode != 0:
    raise RuntimeError(f'{script} failed:\n{proc.stderr[-3000:]}')
  with open(os.path.join(scratch, f'{script}.json')) as f:
    return json.load(f)


def peak_gflops(n, repeats=5):
  """float32 GFLOP/s of an n x n matmul, the machine's practical peak (median of `repeats`)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  a = tf.random.stateless_normal((n, n), (0, 1))
  b = tf.random.stateless_normal((n, n), (0, 2))
  matmul = tf.function(lambda x, y: tf.reduce_sum(x @ y))
  float(matmul(a, b))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    float(matmul(a, b))
    times.append(time.perf_counter() - start)
  return 2 * n ** 3 / statistics.median(times) / 1e9


def forward_flops(model_name):
  """FLOPs of one image's inference forward pass, counted by TensorFlow's profiler."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from agkd_tf import models  # pylint: disable=g-import-not-at-top
  net = models.build(model_name, (32, 32, 3), 10)
  fn = tf.function(lambda x: net(x, training=False)['logits'])
  graph = fn.get_concrete_function(tf.TensorSpec([1, 32, 32, 3], tf.float32)).graph
  opts = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
  opts['output'] = 'none'
  return tf.compat.v1.profiler.profile(graph=graph, options=opts).total_float_ops


def main(argv):
  del argv
  m = FLAGS.model
  rows = []
  with tempfile.TemporaryDirectory() as scratch:
    if 'train' in FLAGS.parts:
      r = _bench('train_throughput', [f'--models={m}', '--steps=10', f'--rounds={FLAGS.rounds}',
                                      f'--batch_size={FLAGS.train_batch}'], scratch)['rows'][0]
      rows.append({'measure': 'natural training: our loop / model.fit', 'ours': r['ours_img_per_s'],
                   'baseline': r['fit_img_per_s'], 'ratio': r['ratio_median'],
                   'unit': 'img/s', 'units': UNITS['natural']})
    if 'attack' in FLAGS.parts:
      r = _bench('attack_throughput', [f'--models={m}', f'--rounds={FLAGS.rounds}',
                                       f'--batches={m}:2', '--bf16_models=',
                                       f'--batch_size={FLAGS.attack_batch}'], scratch)['rows'][0]
      rows.append({'measure': 'PGD-20: native / cleverhans', 'ours': r['native_img_s'],
                   'baseline': r['cleverhans_img_s'], 'ratio': r['native_vs_cleverhans'],
                   'unit': 'img/s', 'units': UNITS['pgd20']})
    if 'agkd' in FLAGS.parts:
      r = _bench('agkd_throughput', [f'--models={m}', f'--steps={m}:4', f'--rounds={FLAGS.rounds}',
                                     f'--batch_size={FLAGS.train_batch}'], scratch)['rows'][0]
      rows.append({'measure': 'AGKD-BML K=2 / AT-7, cost per image', 'ours': r['agkd_img_per_s'],
                   'baseline': r['at_img_per_s'], 'ratio': r['cost_ratio_median'],
                   'unit': 'img/s', 'units': UNITS['agkd2']})
    if 'aa' in FLAGS.parts and FLAGS.aa_run:
      out = os.path.join(scratch, 'aa')
      cmd = [sys.executable, '-m', 'agkd_tf.evaluate', f'--model_dir={FLAGS.aa_run}',
             '--attacks=clean,aa', f'--num_examples={FLAGS.aa_examples}', '--verbose=0',
             '--masking_checks=false', f'--output_dir={out}']
      print('$ ' + ' '.join(cmd), flush=True)
      subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
      with open(os.path.join(out, 'eval.json')) as f:
        ev = json.load(f)
      parts = ', '.join(f'{k} {v:.0f} s' for k, v in ev['aa']['time_s'].items())
      rows.append({'measure': f'AutoAttack on {FLAGS.aa_examples} images of {FLAGS.aa_run} '
                              f'({parts}; robust accuracy {ev["accuracy"]["aa"]:.1f}%)',
                   'ours': ev['seconds']['aa'], 'baseline': None, 'ratio': None, 'unit': 's',
                   'units': None})
  peak = peak_gflops(FLAGS.matmul_size)
  flops = forward_flops(m)
  for row in rows:
    if row['units'] is not None:
      row['gflops'] = row['ours'] * row['units'] * flops / 1e9
      row['peak_fraction'] = row['gflops'] / peak
  rows.append({'measure': f'peak: float32 {FLAGS.matmul_size}^2 matmul', 'ours': peak,
               'unit': 'GFLOP/s', 'gflops': peak, 'peak_fraction': 1.0})
  common.write('speed', rows,
               [('measure', 'measure'), ('ours', 'ours'), ('baseline', 'baseline'),
                ('ratio', 'ratio'), ('unit', 'unit'), ('pass units / img', 'units'),
                ('GFLOP/s', 'gflops'), ('fraction of peak', 'peak_fraction')],
               notes=(f'{m}: {flops / 1e6:.1f} MFLOPs per image forward (TensorFlow profiler). '
                      f'Short runs of the other benchmarks (alternating rounds: {FLAGS.rounds} '
                      'each); their full results are in their own files.'),
               extra={'forward_flops': flops, 'peak_gflops': peak})


if __name__ == '__main__':
  app.run(main)
