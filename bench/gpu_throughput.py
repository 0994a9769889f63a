r"""GPU training throughput of AGKD-BML (K = 2) and AT-7 on WRN-28-10, per CIFAR-10 epoch.

Wang et al., ICCV 2021, supplementary Table 4: on a V100, AGKD-BML with K = 2 took 528 s per
CIFAR-10 epoch and AT with PGD-7 502 s. This script times both training steps on one GPU with
bfloat16 mixed precision and XLA, on synthetic CIFAR-shaped data (speed does not depend on the
pixels or the weights), alternating the two methods in one process, and prints the implied seconds
per 50,000-image epoch beside the paper's. Our goal: at most 30 s per AGKD-BML epoch on an H100.

  python bench/gpu_throughput.py                       # on a GPU machine, about 2 minutes
  python bench/gpu_throughput.py --model=cnn-cpu --batch_size=8 --seconds=1 --jit=false \
      --precision=float32 --results_dir=/tmp/gpu_smoke  # the CPU smoke test

Without a GPU it still runs (that is how it is tested), but it refuses to write
bench/results/gpu.* so that a CPU figure can never pass for the GPU one.
"""

import os
import statistics
import sys
import time

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import agkd_tf  # pylint: disable=g-import-not-at-top,unused-import,wrong-import-position
import keras  # pylint: disable=g-import-not-at-top,wrong-import-position
import tensorflow as tf  # pylint: disable=g-import-not-at-top,wrong-import-position

from agkd_tf import data  # pylint: disable=g-import-not-at-top,wrong-import-position
from agkd_tf.data import pipeline  # pylint: disable=g-import-not-at-top,wrong-import-position
from bench import common  # pylint: disable=g-import-not-at-top,wrong-import-position

flags.DEFINE_string('model', 'wrn-28-10', 'Network (the paper\'s WRN-28-10).')
flags.DEFINE_integer('batch_size', 128, 'Training batch size (the paper\'s 128).')
flags.DEFINE_integer('agkd_steps', 2, 'AGKD-BML attack steps K (Table 4: 2).')
flags.DEFINE_integer('at_steps', 7, 'AT attack steps (Table 4: 7).')
flags.DEFINE_float('seconds', 20.0, 'Timed seconds per method and round, after compilation.')
flags.DEFINE_integer('rounds', 2, 'Alternating rounds.')
flags.DEFINE_enum('precision', 'bfloat16', ['bfloat16', 'float32'], 'Keras precision policy.')
flags.DEFINE_bool('jit', True, 'XLA-compile the replica step.')
flags.DEFINE_integer('bank_examples', 10000, 'Synthetic training images (AGKD-BML\'s class bank).')
flags.DEFINE_string('results_dir', None, 'Where gpu.{md,json} go (default bench/results, and only '
                    'when a GPU is present).')
FLAGS = flags.FLAGS

EPOCH_IMAGES = 50000
PAPER_V100_SECONDS = {'agkd_bml': 528.0, 'at': 502.0}
GOAL_H100_SECONDS = 30.0


def _timer(method_name, steps, splits, device):
  _, step = common.build_training(method_name, FLAGS.model, splits, steps, device=device,
                                  jit_compile=FLAGS.jit)

  def batches(epoch):
    return iter(pipeline.train_dataset(splits.x_train, splits.y_train, FLAGS.batch_size, epoch,
                                       0).repeat())

  it = batches(0)
  start = time.perf_counter()
  for _ in range(2):  # Tracing, XLA compilation and autotuning stay outside the timed window.
    float(step(it)['loss'])
  compile_s = time.perf_counter() - start

  def run():
    n, start = 0, time.perf_counter()
    while True:
      float(step(it)['loss'])  # Synchronises with the device each step.
      n += 1
      elapsed = time.perf_counter() - start
      if elapsed >= FLAGS.seconds:
        return n * FLAGS.batch_size / elapsed
  return run, compile_s


def main(argv):
  del argv
  gpus = tf.config.list_logical_devices('GPU')
  device = gpus[0].name if gpus else '/cpu:0'
  if not gpus and FLAGS.results_dir is None:
    raise app.UsageError('no GPU here: pass --results_dir for a CPU smoke run (bench/results/gpu.* '
                         'holds GPU figures only)')
  keras.mixed_precision.set_global_policy(
      'mixed_bfloat16' if FLAGS.precision == 'bfloat16' else 'float32')
  splits = data.load('synthetic:32', train_examples=FLAGS.bank_examples, test_examples=10)
  timers = {}
  for name, steps in (('agkd_bml', FLAGS.agkd_steps), ('at', FLAGS.at_steps)):
    timers[name], compile_s = _timer(name, steps, splits, device)
    print(f'{name}: compiled in {compile_s:.1f} s', flush=True)
  speeds = {k: [] for k in timers}
  for r in range(FLAGS.rounds):
    for name in (list(timers) if r % 2 == 0 else list(timers)[::-1]):
      speeds[name].append(timers[name]())
    print(f'round {r}: ' + ', '.join(f'{k} {v[-1]:.1f} img/s' for k, v in speeds.items()),
          flush=True)
  rows = []
  for name, label in (('agkd_bml', f'AGKD-BML K={FLAGS.agkd_steps}'),
                      ('at', f'AT-{FLAGS.at_steps}')):
    ips = statistics.median(speeds[name])
    rows.append({'method': label, 'img_per_s': ips, 'epoch_s': EPOCH_IMAGES / ips,
                 'paper_v100_epoch_s': PAPER_V100_SECONDS[name],
                 'speedup_vs_paper': PAPER_V100_SECONDS[name] / (EPOCH_IMAGES / ips)})
  agkd_epoch = rows[0]['epoch_s']
  where = gpus[0].name if gpus else 'CPU (smoke run, not a GPU figure)'
  notes = (f'{FLAGS.model}, batch {FLAGS.batch_size}, {FLAGS.precision}, XLA {FLAGS.jit}, '
           f'synthetic 32x32 images, {FLAGS.rounds} alternating rounds of {FLAGS.seconds:.0f} s '
           f'after compilation, medians; device: {where}. Epoch = {EPOCH_IMAGES} images. '
           f'Goal: AGKD-BML <= {GOAL_H100_SECONDS:.0f} s per epoch on an H100 '
           f'({"met" if agkd_epoch <= GOAL_H100_SECONDS else "not met"} here: '
           f'{agkd_epoch:.1f} s). Cost ratio AGKD-BML / AT: '
           f'{rows[1]["img_per_s"] / rows[0]["img_per_s"]:.3f} (paper 1.05).')
  if FLAGS.results_dir:
    common.RESULTS = FLAGS.results_dir
  common.write('gpu', rows, [('method', 'method'), ('img/s', 'img_per_s'),
                             ('s per CIFAR-10 epoch', 'epoch_s'),
                             ('paper, V100 (s)', 'paper_v100_epoch_s'),
                             ('speed-up vs paper', 'speedup_vs_paper')], notes=notes)


if __name__ == '__main__':
  app.run(main)
