r"""PGD-20 throughput: our compiled attack against cleverhans 4, and float32 against bfloat16.

On the same network in the same process, alternating in rounds, at batch 256:
- native float32 PGD-20 images/sec / cleverhans `projected_gradient_descent` images/sec
  (goal >= 1.05). Our loop is unrolled on CPUs for step counts up to
  `attacks.MAX_UNROLLED_STEPS`; the same attack with its step count given as a tensor runs as a
  `tf.while_loop`, and is timed too (native unrolled / native while_loop) to show what the
  unrolling is worth;
- native PGD-20 with the network's passes in bfloat16, as `--attack_dtype=bfloat16` runs the
  training-time attacks (`models.compute_dtype`: every layer under the Keras `mixed_bfloat16`
  policy for the call, inference BatchNorm as one fused bfloat16 op; the perturbation
  stays float32) / native float32.
With --model_dir (a trained cnn-cpu run), it also reports how much the attack's strength changes
in bfloat16: PGD-20 accuracy with float32 and with bfloat16 passes on the same test images.
With --bf16_training, it times a whole AGKD-BML K = 10 training step (batch 128) with
`--attack_dtype=bfloat16` against float32 for those models, alternating in the same way: the
attacks, Grad-CAM and the teacher's pass are most of that step, the weight update stays float32.

  python bench/attack_throughput.py [--models=cnn-cpu,wrn-16-4] [--model_dir=RUN] [--readme]
"""

import json
import os
import statistics
import sys
import time

from absl import app
from absl import flags
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import agkd_tf  # pylint: disable=g-import-not-at-top,unused-import,wrong-import-position
import tensorflow as tf  # pylint: disable=g-import-not-at-top,wrong-import-position
from cleverhans.tf2.attacks import projected_gradient_descent as ch_pgd  # pylint: disable=g-import-not-at-top,wrong-import-position

from agkd_tf import attacks  # pylint: disable=g-import-not-at-top,wrong-import-position
from agkd_tf import data  # pylint: disable=g-import-not-at-top,wrong-import-position
from agkd_tf import models  # pylint: disable=g-import-not-at-top,wrong-import-position
from agkd_tf import run_dir  # pylint: disable=g-import-not-at-top,wrong-import-position
from bench import common  # pylint: disable=g-import-not-at-top,wrong-import-position

flags.DEFINE_list('models', ['cnn-cpu', 'wrn-16-4'], 'Networks to measure.')
flags.DEFINE_integer('batch_size', 256, 'Batch size.')
flags.DEFINE_list('rounds', ['3'], 'Alternating rounds: N for every model, or MODEL:N (3 for '
                  'models not listed).')
flags.DEFINE_list('batches', ['cnn-cpu:4', 'wrn-16-4:1'], 'Timed batches per side and round, per '
                  'model (MODEL:N; 2 for models not listed).')
flags.DEFINE_string('model_dir', None, 'A trained run for the bf16 strength comparison.')
flags.DEFINE_integer('strength_examples', 1000, 'Test images for the strength comparison.')
flags.DEFINE_integer('bf16_batch_size', 32, 'Batch of the bfloat16-vs-float32 timing.')
flags.DEFINE_list('bf16_models', ['cnn-cpu'], 'Models whose bfloat16 attack is timed too (on a '
                  'CPU without native bfloat16 it is several times slower than float32).')
flags.DEFINE_list('bf16_training', [], 'Models whose AGKD-BML K=10 training step is timed with '
                  '--attack_dtype=bfloat16 against float32.')
flags.DEFINE_list('train_steps', ['cnn-cpu:4', 'wrn-16-4:1'], 'Timed training steps per side '
                  'and round, per model (MODEL:N; 2 for models not listed).')
flags.DEFINE_string('dataset', 'folder:../shared/data/cifar10-jpeg', 'Training images of the '
                    'AGKD-BML step (its class bank; synthetic:32 when the folder is absent).')
flags.DEFINE_bool('readme', False, 'Also rewrite the README block of these results.')
FLAGS = flags.FLAGS
EPS, STEP, STEPS = 8 / 255, 2 / 255, 20


def _fns(network):
  def logits(x):
    return network(x, training=False)['logits']

  def logits_bf16(x):
    # The network's layers switched to bfloat16 for this call, as --attack_dtype=bfloat16 does.
    with models.compute_dtype(network, 'bfloat16'):
      return network(x, training=False)['logits']

  @tf.function(reduce_retracing=True)
  def native(x, y, seed):
    return attacks.pgd(logits, x, y, EPS, STEP, STEPS, seed=seed)

  @tf.function(reduce_retracing=True)
  def native_while(x, y, seed):
    # A tensor step count cannot be unrolled: this is the same attack as one tf.while_loop.
    return attacks.pgd(logits, x, y, EPS, STEP, tf.constant(STEPS), seed=seed)

  @tf.function(reduce_retracing=True)
  def native_bf16(x, y, seed):
    return attacks.pgd(logits_bf16, x, y, EPS, STEP, STEPS, seed=seed)

  @tf.function(reduce_retracing=True)
  def cleverhans(x, y, seed):
    del seed
    return ch_pgd.projected_gradient_descent(logits, x, EPS, STEP, STEPS, np.inf, clip_min=0.0,
                                             clip_max=1.0, y=y, rand_init=True, rand_minmax=EPS,
                                             sanity_checks=False)
  return {'native': native, 'native_while': native_while, 'native_bf16': native_bf16,
          'cleverhans': cleverhans}


def _batches(name):
  return int(dict(b.split(':') for b in FLAGS.batches).get(name, 2))


def _rounds(name):
  per_model = dict(r.split(':') for r in FLAGS.rounds if ':' in r)
  default = [r for r in FLAGS.rounds if ':' not in r]
  return int(per_model.get(name, default[0] if default else 3))


_WARM = set()


def _time(fn, x, y, batches):
  if (fn, x.shape[0]) not in _WARM:
    # One untimed call: tracing, Grappler's graph rewrites and the allocator's first growth
    # all happen on the first execution, and would otherwise bill whichever side runs first.
    fn(x, y, tf.constant([0, 0])).numpy()
    _WARM.add((fn, x.shape[0]))
  start = time.perf_counter()
  for b in range(batches):
    fn(x, y, tf.constant([1, b])).numpy()
  return batches * int(x.shape[0]) / (time.perf_counter() - start)


def _strength(model_dir):
  network, spec = run_dir.load_network(model_dir)
  splits = data.load(spec['dataset'], train_examples=1, test_examples=FLAGS.strength_examples)
  fns = _fns(network)
  out = {'model': spec['model']}
  for name in ('native', 'native_bf16'):
    correct = 0
    for i in range(0, len(splits.y_test), FLAGS.batch_size):
      x = tf.constant(splits.x_test[i:i + FLAGS.batch_size], tf.float32) / 255.0
      y = tf.constant(splits.y_test[i:i + FLAGS.batch_size])
      x_adv = fns[name](x, y, tf.constant([7, i]))
      pred = tf.argmax(network(x_adv, training=False)['logits'], -1, output_type=tf.int32)
      correct += int(tf.reduce_sum(tf.cast(pred == y, tf.int32)))
    out[name] = 100.0 * correct / len(splits.y_test)
  return out, len(splits.y_test)


def _training_ratios(name, rounds):
  """AGKD-BML K=10 training-step img/s with bfloat16 attacks and with float32 ones."""
  # pylint: disable=g-import-not-at-top
  from agkd_tf.core import errors
  from agkd_tf.data import pipeline
  # pylint: enable=g-import-not-at-top
  steps = int(dict(s.split(':') for s in FLAGS.train_steps).get(name, 2))
  batch = 128
  n = batch * (steps + 1) * rounds
  try:
    splits = data.load(FLAGS.dataset, train_examples=n, test_examples=100)
  except errors.UserError:
    splits = data.load('synthetic:32', train_examples=n, test_examples=100)
  runners = {}
  for dtype in ('float32', 'bfloat16'):
    _, step = common.build_training('agkd_bml', name, splits, 10,
                                    overrides={'attack_dtype': dtype})
    warm = iter(pipeline.train_dataset(splits.x_train, splits.y_train, batch, 99, 0))
    float(step(warm)['loss'])  # Tracing and the first execution, untimed.
    runners[dtype] = step
  ips = {'float32': [], 'bfloat16': []}
  for r in range(rounds):
    for dtype in (('float32', 'bfloat16') if r % 2 == 0 else ('bfloat16', 'float32')):
      # Both sides see the same batches of epoch r.
      it = iter(pipeline.train_dataset(splits.x_train, splits.y_train, batch, r, 0))
      start = time.perf_counter()
      for _ in range(steps):
        float(runners[dtype](it)['loss'])
      ips[dtype].append(steps * batch / (time.perf_counter() - start))
    print(f'{name} AGKD-BML K=10 step round {r}: float32 {ips["float32"][-1]:.1f} img/s, '
          f'bfloat16 attacks {ips["bfloat16"][-1]:.1f} img/s', flush=True)
  return [b / f for b, f in zip(ips['bfloat16'], ips['float32'])], steps


def main(argv):
  del argv
  rng = np.random.RandomState(0)
  rows = []
  for name in FLAGS.models:
    network = models.build(name, (32, 32, 3), 10)
    fns = _fns(network)
    x = tf.constant(rng.rand(FLAGS.batch_size, 32, 32, 3).astype(np.float32))
    y = tf.constant(rng.randint(0, 10, FLAGS.batch_size).astype(np.int32))
    speeds = {'native': [], 'cleverhans': [], 'native_while': []}
    for r in range(_rounds(name)):
      order = list(speeds)[r % 3:] + list(speeds)[:r % 3]  # Each side runs first in turn.
      for k in order:
        speeds[k].append(_time(fns[k], x, y, _batches(name)))
      print(f'{name} round {r}: ' + ', '.join(f'{k} {v[-1]:.1f} img/s' for k, v in
                                            speeds.items()), flush=True)
    ratio_ch = [a / b for a, b in zip(speeds['native'], speeds['cleverhans'])]
    ratio_while = [a / b for a, b in zip(speeds['native'], speeds['native_while'])]
    # bfloat16 on a smaller batch of its own, against float32 on the same batch: on a CPU
    # without native bfloat16 it is several times slower, and a full batch would take minutes.
    bf = {'native': [], 'native_bf16': []}
    if name in FLAGS.bf16_models:
      xs, ys = x[:FLAGS.bf16_batch_size], y[:FLAGS.bf16_batch_size]
      for r in range(_rounds(name)):
        order = ['native', 'native_bf16'] if r % 2 == 0 else ['native_bf16', 'native']
        for k in order:
          bf[k].append(_time(fns[k], xs, ys, 1))
        print(f'{name} bf16 round {r} (batch {FLAGS.bf16_batch_size}): float32 '
              f'{bf["native"][-1]:.1f} img/s, bfloat16 {bf["native_bf16"][-1]:.1f} img/s',
              flush=True)
    ratio_bf = [a / b for a, b in zip(bf['native_bf16'], bf['native'])]
    ratio_train, train_steps = ([], 0)
    if name in FLAGS.bf16_training:
      ratio_train, train_steps = _training_ratios(name, _rounds(name))
    rows.append({'model': name, 'batch': FLAGS.batch_size, 'timed_batches': _batches(name),
                 'native_img_s': statistics.median(speeds['native']),
                 'cleverhans_img_s': statistics.median(speeds['cleverhans']),
                 'native_vs_cleverhans': statistics.median(ratio_ch),
                 'ratio_min': min(ratio_ch), 'ratio_max': max(ratio_ch),
                 'while_img_s': statistics.median(speeds['native_while']),
                 'unrolled_vs_while': statistics.median(ratio_while),
                 'bf16_vs_fp32': statistics.median(ratio_bf) if ratio_bf else None,
                 'bf16_batch': FLAGS.bf16_batch_size,
                 'bf16_train_step_vs_fp32': (statistics.median(ratio_train) if ratio_train
                                             else None),
                 'bf16_train_min': min(ratio_train) if ratio_train else None,
                 'bf16_train_max': max(ratio_train) if ratio_train else None,
                 'train_timed_steps': train_steps})
  notes = (f'PGD-20 (eps 8/255, step 2/255, random start), batch {FLAGS.batch_size}, '
           f'alternating rounds ({", ".join(f"{m}: {_rounds(m)}" for m in FLAGS.models)}), '
           'medians. '
           f'Goal: native/cleverhans >= 1.05. "while_loop img/s": the same native attack with '
           f'its step count as a tensor, so one tf.while_loop instead of the unrolled loop. '
           f'bf16 / fp32: native PGD-20 with bfloat16 passes '
           f'against float32 passes, batch {FLAGS.bf16_batch_size}. AGKD-BML K=10 step: a '
           'whole training step (batch 128) with --attack_dtype=bfloat16 against float32, '
           'same process, alternating.')
  strength = None
  if FLAGS.model_dir:
    strength, n = _strength(FLAGS.model_dir)
    strength['n'] = n
    notes += (f' Attack strength on {n} test images of {FLAGS.model_dir}: PGD-20 accuracy '
              f'{strength["native"]:.2f}% with float32 passes, {strength["native_bf16"]:.2f}% '
              'with bfloat16 passes.')
  common.write('attack_throughput', rows,
               [('model', 'model'), ('batch', 'batch'), ('timed batches', 'timed_batches'),
                ('native img/s', 'native_img_s'), ('cleverhans img/s', 'cleverhans_img_s'),
                ('native / cleverhans (median)', 'native_vs_cleverhans'), ('min', 'ratio_min'),
                ('max', 'ratio_max'), ('while_loop img/s', 'while_img_s'),
                ('unrolled / while_loop', 'unrolled_vs_while'), ('bf16 / fp32', 'bf16_vs_fp32'),
                ('AGKD-BML K=10 step, bf16 attacks / fp32', 'bf16_train_step_vs_fp32')],
               notes=notes, extra={'rounds': {m: _rounds(m) for m in FLAGS.models},
                                   'strength': strength})
  if FLAGS.readme:
    write_readme()


def write_readme():
  """The README's PGD rows of the Speed table, from results/attack_throughput.json."""
  with open(os.path.join(common.RESULTS, 'attack_throughput.json')) as f:
    result = json.load(f)
  features = result['machine'].get('cpu_features', [])
  cpu = f'{result["machine"]["cpu"]} ({", ".join(features) or "features not recorded"})'
  lines = ['| benchmark | figure | command |', '|---|---|---|']
  for r in result['rows']:
    n = result['rounds'][r['model']]
    lines.append(
        f'| PGD-20, our compiled attack / cleverhans `projected_gradient_descent`, {r["model"]}, '
        f'batch {r["batch"]} | {r["native_vs_cleverhans"]:.2f}x median ({r["ratio_min"]:.2f}-'
        f'{r["ratio_max"]:.2f} over {n} rounds; {r["native_img_s"]:.1f} vs '
        f'{r["cleverhans_img_s"]:.1f} img/s); unrolled / `tf.while_loop` '
        f'{r["unrolled_vs_while"]:.2f}x; {cpu} | `{result["command"]}` |')
    if r['bf16_vs_fp32'] is not None:
      strength = result.get('strength')
      same = ('' if not strength or strength.get('model', r['model']) != r['model'] else
              f'; PGD-20 accuracy {strength["native"]:.2f}% in float32, '
              f'{strength["native_bf16"]:.2f}% in bfloat16 on {strength["n"]} test images')
      lines.append(
          f'| PGD-20 with bfloat16 passes / float32, {r["model"]}, batch {r["bf16_batch"]} '
          f'| {r["bf16_vs_fp32"]:.2f}x on {cpu} ({_bf16_note(features)}){same} | the same command |')
    if r.get('bf16_train_step_vs_fp32') is not None:
      lines.append(
          f'| AGKD-BML K = 10 training step, `--attack_dtype=bfloat16` / float32, {r["model"]}, '
          f'batch 128 | {r["bf16_train_step_vs_fp32"]:.2f}x median ({r["bf16_train_min"]:.2f}-'
          f'{r["bf16_train_max"]:.2f} over {n} rounds) on {cpu} ({_bf16_note(features)}) | the '
          'same command |')
  common.readme_block('attack_throughput', lines)


def _bf16_note(features):
  """Whether the measured CPU had native bfloat16 arithmetic, from its recorded features."""
  have = [f for f in features if 'bf16' in f]
  if have:
    return f'native bfloat16: {", ".join(have)}'
  return 'no native bfloat16: no AVX-512-BF16 or AMX'


if __name__ == '__main__':
  app.run(main)
