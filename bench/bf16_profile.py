r"""Where the time of a PGD-20 attack goes, float32 against bfloat16 passes: a per-op profile.

Mixed-precision training (Micikevicius et al., ICLR 2018) speeds up what runs in the narrow type,
the convolutions and matrix products, and nothing else: element-wise ops, the casts it adds and the
attack's own arithmetic keep their cost. `bench/attack_throughput.py` measures the end-to-end
bfloat16 / float32 factor of PGD-20 (Madry et al., ICLR 2018) per model; this script says why it
differs between models. It traces a few PGD-20 calls of each kind with TensorFlow's profiler, sums
each op type's self time (the profiler's framework_op_stats; its IDLE rows, threads waiting, are
left out) and splits it into the convolution kernels (forward and input gradient, pooling) and the
rest. The Amdahl factor is what the attack would gain if only the convolution time shrank as
measured: busy float32 time over (rest of float32 + convolutions in bfloat16).

  python bench/bf16_profile.py [--models=cnn-cpu,wrn-16-4] [--batch_size=64] [--calls=3]
"""

import collections
import glob
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common  # pylint: disable=g-import-not-at-top,wrong-import-position

FLAGS = flags.FLAGS
EPS, STEP, STEPS = 8 / 255, 2 / 255, 20
# framework_op_stats lists at most this many ops (one row per op of the graph, most expensive first).
PROFILER_ROWS = 500
# Op types whose kernels bfloat16 makes narrower (oneDNN's and TensorFlow's names). BatchNorm is not
# one: in float32 it is Keras's element-wise ops, in bfloat16 attacks one FusedBatchNormV3, and
# counting it in "the rest" on both sides keeps the two splits comparable.
CONV_MARKERS = ('Conv2D', 'MatMul', 'MaxPool', 'AvgPool', 'BatchMatMul')


def define_flags():
  flags.DEFINE_list('models', ['cnn-cpu', 'wrn-16-4'], 'Networks (fresh weights).')
  flags.DEFINE_integer('batch_size', 64, 'Attack batch (as attack_throughput\'s bf16 timing).')
  flags.DEFINE_integer('calls', 3, 'Traced PGD-20 calls per kind, after one untraced warm-up.')
  flags.DEFINE_integer('top', 8, 'Op types listed per model and kind.')


def is_conv(op_type):
  return any(m in op_type for m in CONV_MARKERS)


def op_times(op_stats_json):
  """{op type: total self time in ms} from framework_op_stats, without the IDLE rows."""
  table = json.loads(op_stats_json)[0]
  if len(table['rows']) >= PROFILER_ROWS:
    # The table keeps the most expensive ops only: the split would miss the cheap ones.
    raise SystemExit(f'error: the profiler\'s op table is full ({len(table["rows"])} rows); '
                     'the split into convolutions and the rest would be wrong')
  ids = [c['id'] for c in table['cols']]
  out = collections.Counter()
  for row in table['rows']:
    values = {i: c.get('v') for i, c in zip(ids, row['c'])}
    if values['type'] != 'IDLE':
      out[values['type']] += values['total_self_time'] / 1e3
  return out


def summary(times_fp32, times_bf16):
  """The split into convolution kernels and the rest, and the Amdahl factor."""
  def split(times):
    conv = sum(t for k, t in times.items() if is_conv(k))
    return conv, sum(times.values()) - conv
  conv32, rest32 = split(times_fp32)
  conv16, rest16 = split(times_bf16)
  return {'busy_ms_fp32': round(conv32 + rest32, 1), 'busy_ms_bf16': round(conv16 + rest16, 1),
          'conv_ms_fp32': round(conv32, 1), 'conv_ms_bf16': round(conv16, 1),
          'rest_ms_fp32': round(rest32, 1), 'rest_ms_bf16': round(rest16, 1),
          'cast_ms_bf16': round(times_bf16.get('Cast', 0.0), 1),
          'conv_share_fp32': round(100 * conv32 / (conv32 + rest32), 1),
          'conv_speedup': round(conv32 / conv16, 2) if conv16 else None,
          'rest_speedup': round(rest32 / rest16, 2) if rest16 else None,
          'busy_speedup': round((conv32 + rest32) / (conv16 + rest16), 2),
          'amdahl_conv_only': round((conv32 + rest32) / (rest32 + conv16), 2)}


def profile(fn, x, y, seed, calls):
  """({op type: self ms} over `calls` traced calls of fn, median wall ms of untraced calls)."""
  # pylint: disable=g-import-not-at-top
  import tensorflow as tf
  from tensorflow.python.profiler.internal import _pywrap_profiler_plugin
  # pylint: enable=g-import-not-at-top
  fn(x, y, seed).numpy()  # Traced and warmed up outside the profile.
  logdir = tempfile.mkdtemp(prefix='bf16_profile_')
  try:
    tf.profiler.experimental.start(logdir)
    for _ in range(calls):
      fn(x, y, seed).numpy()
    tf.profiler.experimental.stop()
    planes = glob.glob(os.path.join(logdir, '**', '*.xplane.pb'), recursive=True)
    data, ok = _pywrap_profiler_plugin.xspace_to_tools_data(planes, 'framework_op_stats', {})
    if not ok:
      raise SystemExit('error: the profiler gave no framework_op_stats')
    walls = []
    for _ in range(calls):
      start = time.perf_counter()
      fn(x, y, seed).numpy()
      walls.append(1e3 * (time.perf_counter() - start))
    return op_times(data), statistics.median(walls)
  finally:
    shutil.rmtree(logdir, ignore_errors=True)


def main(argv):
  del argv
  # pylint: disable=g-import-not-at-top
  import tensorflow as tf
  from agkd_tf import attacks
  from agkd_tf import models
  # pylint: enable=g-import-not-at-top
  rows, detail = [], {}
  for name in FLAGS.models:
    network = models.build(name, (32, 32, 3), 10)
    x = tf.random.stateless_uniform((FLAGS.batch_size, 32, 32, 3), (1, 2))
    y = tf.random.stateless_uniform((FLAGS.batch_size,), (3, 4), 0, 10, tf.int32)
    seed = tf.constant([0, 0], tf.int32)
    times, wall = {}, {}
    for kind in ('float32', 'bfloat16'):
      def logits(z, kind=kind):
        # bfloat16 passes as --attack_dtype=bfloat16 runs them (models.compute_dtype).
        with models.compute_dtype(network, kind):
          return network(z, training=False)['logits']
      # A tensor step count: the attack is one tf.while_loop, each op once in the profiler's
      # table (20 unrolled steps of WRN-16-4 would fill its rows with convolutions alone).
      fn = tf.function(lambda x, y, s, f=logits: attacks.pgd(f, x, y, EPS, STEP,
                                                             tf.constant(STEPS), seed=s))
      times[kind], wall[kind] = profile(fn, x, y, seed, FLAGS.calls)
    row = {'model': name, **summary(times['float32'], times['bfloat16'])}
    # Busy time is summed over threads: over wall time x cores it is how much of the machine the
    # kernels keep busy; the rest is dispatch and waiting, which bfloat16 does not shorten.
    cores = os.cpu_count()
    row.update(
        wall_ms_fp32=round(wall['float32'], 1), wall_ms_bf16=round(wall['bfloat16'], 1),
        wall_speedup=round(wall['float32'] / wall['bfloat16'], 2),
        busy_share_fp32=round(100 * row['busy_ms_fp32'] / FLAGS.calls /
                              (wall['float32'] * cores), 1),
        busy_share_bf16=round(100 * row['busy_ms_bf16'] / FLAGS.calls /
                              (wall['bfloat16'] * cores), 1))
    rows.append(row)
    detail[name] = {k: [[op, round(t, 1)] for op, t in v.most_common(FLAGS.top)]
                    for k, v in times.items()}
    print(f'{name}: wall {row["wall_speedup"]}x, busy {row["busy_speedup"]}x, convolutions {row["conv_speedup"]}x '
          f'({row["conv_share_fp32"]}% of float32), the rest {row["rest_speedup"]}x', flush=True)
  columns = [('model', 'model'), ('conv share of float32 busy time %', 'conv_share_fp32'),
             ('conv kernels fp32 / bf16', 'conv_speedup'), ('the rest fp32 / bf16',
                                                           'rest_speedup'),
             ('Cast ms (bf16)', 'cast_ms_bf16'), ('busy time fp32 / bf16', 'busy_speedup'),
             ('Amdahl bound, convolutions only', 'amdahl_conv_only'),
             ('wall time fp32 / bf16', 'wall_speedup'),
             ('busy share of wall x cores %, fp32', 'busy_share_fp32'),
             ('busy share %, bf16', 'busy_share_bf16'),
             ('wall ms per call fp32', 'wall_ms_fp32'), ('wall ms per call bf16', 'wall_ms_bf16')]
  notes = (f'PGD-20 (eps 8/255, step 2/255) as one tf.while_loop, batch {FLAGS.batch_size}, '
           f'{FLAGS.calls} traced calls per kind after a warm-up, fresh weights; float32 against '
           'the same network with its passes in bfloat16 as --attack_dtype=bfloat16 runs them '
           '(models.compute_dtype: the Keras mixed_bfloat16 policy, inference BatchNorm as one '
           'fused bfloat16 op). Self time per op type from TensorFlow\'s '
           'profiler (framework_op_stats), IDLE left out; "conv kernels" are the op types with '
           f'{", ".join(CONV_MARKERS)} in their name, "the rest" every other op (element-wise '
           'arithmetic, the casts bfloat16 adds, the attack\'s projection). Wall time: median of '
           f'{FLAGS.calls} untraced calls; busy share: busy time per call over wall time x '
           f'{os.cpu_count()} cores (the remainder is op dispatch and threads waiting). The top op '
           'types of each run are in the JSON (detail).')
  common.write('bf16_profile', rows, columns, notes=notes, extra={'detail': detail})


if __name__ == '__main__':
  define_flags()
  app.run(main)
