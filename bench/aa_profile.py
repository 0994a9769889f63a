r"""Where our AutoAttack's time goes: each attack's iteration against the network passes it makes.

Croce and Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", ICML 2020. `bench/aa_parity.py` times our AutoAttack against the official
one on the same SavedModel and images; this script says how much of our time any implementation
would have to spend anyway. Every attack of the standard version is a fixed number of passes
through the network per image and iteration (APGD: one input gradient; FAB-T: one input gradient
and one forward pass to check the new point; Square: one forward pass per query), and the official
code makes the same passes. What is left of an iteration's time after its passes is the attack's
own work (projections, sorts, selections, loop overhead), the part an implementation can cut.

For each model, on the images our AutoAttack left robust in a finished `aa_parity.py` run (kept
in its --state_dir: the images FAB-T and Square spend their time on, in a batch of about one
chunk's robust images), the script times in one process, alternating, median over --rounds:
  - a forward pass and an input gradient, per image, --iterations of each in one tf.while_loop;
  - one iteration per image of our APGD (CE and targeted DLR), FAB-T and Square, --iterations
    of each in its own compiled loop.
The share of each iteration that is network passes, times the seconds each of our attacks took
in the `aa_parity` row of that model (bench/results/aa_parity.json), estimates the seconds our
AutoAttack would take if it did nothing but its passes; over the official seconds, that is the
lowest time ratio this comparison allows on this machine. No torch needed.

  python bench/aa_profile.py --models=at_cpu=bench/results/models/at_cpu \
      --state_dir=bench/results/aa_parity_state [--readme]
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

from bench import common  # pylint: disable=g-import-not-at-top,wrong-import-position

FLAGS = flags.FLAGS

ATTACKS = ('apgd-ce', 'apgd-t', 'fab-t', 'square')
# Network passes per image and iteration, as (forward passes, input gradients).
PASSES = {'apgd-ce': (0, 1), 'apgd-t': (0, 1), 'fab-t': (1, 1), 'square': (1, 0)}


def define_flags():
  flags.DEFINE_list('models', None, 'NAME=SAVED_MODEL_DIR,...: the names of the aa_parity rows.')
  flags.DEFINE_string('state_dir', 'bench/results/aa_parity_state',
                      "aa_parity.py's --state_dir: the per-image verdicts of its finished chunks.")
  flags.DEFINE_string('parity', None, 'aa_parity.json to read the seconds per attack from '
                      '(default: bench/results/aa_parity.json).')
  flags.DEFINE_integer('num_images', 58, 'Images (left robust by ours) in the timed batch.')
  flags.DEFINE_integer('iterations', 50, 'Iterations (queries for Square) per timed call.')
  flags.DEFINE_integer('rounds', 3, 'Alternating rounds; medians are reported.')
  flags.DEFINE_bool('readme', False, "Also write the README's aa_profile block.")


def robust_images(state_dir, name):
  """(indices, settings) of the images ours left robust in the kept chunks of model `name`."""
  indices, settings = [], None
  for i in range(1000):
    path = os.path.join(state_dir, f'{name}.chunk{i}.json')
    if not os.path.isfile(path):
      break
    with open(path) as f:
      record = json.load(f)
    settings = record['settings']
    indices += [j for j, c in zip(record['indices'], record['ours']) if c == '1']
  return sorted(indices), settings


def make_timers(logits_fn, x, y, iterations, eps):
  """Callables, each running `iterations` of one kind of work on the batch (x, y)."""
  # pylint: disable=g-import-not-at-top
  import tensorflow as tf
  from agkd_tf.attacks.autoattack import apgd
  from agkd_tf.attacks.autoattack import fab
  from agkd_tf.attacks.autoattack import square
  # pylint: enable=g-import-not-at-top
  x, y = tf.constant(x), tf.constant(y)
  second = tf.constant(np.argsort(-np.asarray(logits_fn(x)), axis=1)[:, 1].astype(np.int32))

  def passes(gradient):
    @tf.function
    def loop(x):
      def body(i, acc):
        # A different input each time, so that nothing is computed once for all iterations.
        xi = x + tf.cast(i, tf.float32) * 1e-7
        with tf.GradientTape() as tape:
          tape.watch(xi)
          out = tf.reduce_sum(tf.gather(logits_fn(xi), y, batch_dims=1))
        return i + 1, acc + (tf.reduce_sum(tape.gradient(out, xi)) if gradient else out)
      return tf.while_loop(lambda i, _: i < iterations, body, (0, 0.0))[1]
    return lambda: loop(x)

  return {
      'forward': passes(False),
      'gradient': passes(True),
      'apgd-ce': lambda: apgd.apgd_single_run(logits_fn, x, y, eps, n_iter=iterations).x_best,
      'apgd-t': lambda: apgd.apgd_single_run(logits_fn, x, y, eps, n_iter=iterations,
                                             loss='dlr-targeted', y_target=second).x_best,
      'fab-t': lambda: fab.fab_single_run(logits_fn, x, y, eps, targeted=True, y_target=second,
                                          n_iter=iterations)[0],
      'square': lambda: square.square_single_run(logits_fn, x, y, eps, n_queries=iterations),
  }


def profile(timers, n_images, iterations, rounds):
  """Median ms per image and iteration of each timer, alternating over rounds."""
  times = {k: [] for k in timers}
  for fn in timers.values():  # Traces and warms up every loop first.
    np.asarray(fn())
  for _ in range(rounds):
    for k, fn in timers.items():
      start = time.perf_counter()
      np.asarray(fn())
      times[k].append(1000 * (time.perf_counter() - start) / (n_images * iterations))
  return {k: statistics.median(v) for k, v in times.items()}


def shares(ms):
  """Per attack: its passes' ms per image and iteration, and their share of the iteration."""
  out = {}
  for attack in ATTACKS:
    forwards, gradients = PASSES[attack]
    passes = forwards * ms['forward'] + gradients * ms['gradient']
    out[attack] = {'ms': ms[attack], 'passes_ms': passes, 'share': min(passes / ms[attack], 1.0)}
  return out


def floor(parity_row, share):
  """Seconds our AutoAttack would take as passes only, and that over the official seconds."""
  seconds = sum(parity_row['ours_time_s'][a] * share[a]['share'] for a in ATTACKS)
  return seconds, seconds / parity_row['official_s']


def _parity_rows(path):
  with open(path) as f:
    return {r['model']: r for r in json.load(f)['rows']}


def main(argv):
  del argv
  if not FLAGS.models:
    raise SystemExit('error: --models is required: NAME=SAVED_MODEL_DIR[,...]')
  parity_path = FLAGS.parity or os.path.join(common.RESULTS, 'aa_parity.json')
  if not os.path.isfile(parity_path):
    raise SystemExit(f'error: {parity_path} not found: run bench/aa_parity.py first')
  parity = _parity_rows(parity_path)
  # pylint: disable=g-import-not-at-top
  from agkd_tf import data
  from agkd_tf import evaluation
  # pylint: enable=g-import-not-at-top
  rows, readme = [], []
  for pair in FLAGS.models:
    name, _, path = pair.partition('=')
    if name not in parity:
      raise SystemExit(f'error: {parity_path} has no row "{name}"')
    indices, settings = robust_images(FLAGS.state_dir, name)
    if not indices:
      raise SystemExit(f'error: no kept chunk of "{name}" in {FLAGS.state_dir}')
    splits = data.load(settings['dataset'], None, 1, settings['num_examples'], settings['seed'])
    pick = indices[:FLAGS.num_images]
    x = splits.x_test[pick].astype(np.float32)
    x /= 255.0 if splits.x_test.dtype == np.uint8 else 1.0
    y = np.asarray(splits.y_test)[pick].astype(np.int32)
    model = evaluation.load_model(saved_model=path)
    ms = profile(make_timers(model.logits_fn, x, y, FLAGS.iterations, settings['eps']), len(y),
                 FLAGS.iterations, FLAGS.rounds)
    share = shares(ms)
    row = parity[name]
    floor_s, floor_ratio = floor(row, share)
    for attack in ATTACKS:
      rows.append({'model': name, 'attack': attack, 'images': len(y),
                   'ms': round(share[attack]['ms'], 4),
                   'passes_ms': round(share[attack]['passes_ms'], 4),
                   'share': round(100 * share[attack]['share'], 1),
                   'ours_s': round(row['ours_time_s'][attack], 1),
                   'passes_s': round(row['ours_time_s'][attack] * share[attack]['share'], 1),
                   'official_s': round(row['official_time_s'][attack], 1)})
    rows.append({'model': name, 'attack': 'all', 'images': len(y), 'ours_s': row['ours_s'],
                 'passes_s': round(floor_s, 1), 'official_s': row['official_s'],
                 'time_ratio': row['time_ratio'], 'floor_ratio': round(floor_ratio, 3),
                 'forward_ms': round(ms['forward'], 4), 'gradient_ms': round(ms['gradient'], 4)})
    parts = ', '.join(f'{a} {100 * share[a]["share"]:.0f}%' for a in ATTACKS)
    print(f'{name}: passes are {parts} of an iteration; as passes only ours would take '
          f'{floor_s:.0f} s, {floor_ratio:.2f}x the official (measured {row["time_ratio"]:.2f}x)',
          flush=True)
    readme.append(
        f'| where our AutoAttack\'s time goes, {name} ({len(y)} images left robust) | network '
        f'passes are {parts} of an iteration; as passes only, ours would take {floor_s:.0f} s, '
        f'{floor_ratio:.2f}x the official (measured: {row["time_ratio"]:.2f}x) | '
        f'`{common.command()}` |')
  common.write(
      'aa_profile', rows,
      [('model', 'model'), ('attack', 'attack'), ('images', 'images'),
       ('ms per image and iteration', 'ms'), ('of which network passes, ms', 'passes_ms'),
       ('passes share %', 'share'), ('ours s (aa_parity)', 'ours_s'),
       ('of which passes s (est.)', 'passes_s'), ('official s (aa_parity)', 'official_s'),
       ('time ours / official', 'time_ratio'), ('as passes only / official', 'floor_ratio')],
      notes=(f'Our AutoAttack attacks timed per image and iteration on the images they left robust '
             f'in the kept aa_parity chunks ({FLAGS.state_dir}), {FLAGS.iterations} iterations '
             f'per call, median of {FLAGS.rounds} alternating rounds, against a forward pass and '
             'an input gradient timed the same way (network passes per iteration: APGD one '
             'gradient, FAB-T one gradient and one forward, Square one forward). The seconds of '
             f'each attack are those of the aa_parity row ({os.path.relpath(parity_path)}); '
             '"of which passes" is those seconds times the passes share, and the "all" row sums '
             'them: the time our AutoAttack would take if it did nothing but its network passes, '
             'which the official code makes too.'))
  if FLAGS.readme:
    common.readme_block('aa_profile', ['| benchmark | figure | command |', '|---|---|---|'] +
                        readme)


if __name__ == '__main__':
  define_flags()
  app.run(main)
