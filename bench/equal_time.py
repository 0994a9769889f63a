r"""Same-process timing of the equal-time comparison: is K = 8 really AGKD-BML's epoch time?

Wang et al., ICCV 2021, supplementary section 4 gives Feature Scattering and Bilateral more attack
steps (2 and 4) so that their epochs take as long as AGKD-BML's (528 s on a V100). The CPU table's
equal-time rows (`bench/robustness_cpu.py`, rows at_eqt, fs_eqt, bilateral_eqt) do the same with
K = 8. Their epoch times come from runs made in different sessions, often on different machines
of the same nominal size, so their ratio to AGKD-BML's epoch time mixes machines. This benchmark
times one training step of each row's recipe (its flagfile's method settings, the table's
network and batch) against AGKD-BML K = 2 in one process, on the same augmented batches, rotating
which goes first in each round, and reports each one's time per image relative to AGKD-BML's
(median over rounds). The table stage of bench/robustness_cpu.py puts that ratio beside each
row.

  python bench/equal_time.py [--steps=8] [--rounds=4]

With `--study=recipe` it times the rows of the AGKD-BML recipe study (bench/recipe_study.py)
against AGKD-BML K = 10, the study's equal-time view (bench/results/recipe_study_timing.*):

  python bench/equal_time.py --study=recipe [--steps=4] [--rounds=2]
"""

import dataclasses
import os
import statistics
import sys
import time

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import agkd_tf  # pylint: disable=g-import-not-at-top,unused-import,wrong-import-position

from agkd_tf import data  # pylint: disable=g-import-not-at-top,wrong-import-position
from agkd_tf import flags as agkd_flags  # pylint: disable=g-import-not-at-top,wrong-import-position
from agkd_tf import train_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from agkd_tf.data import pipeline  # pylint: disable=g-import-not-at-top,wrong-import-position
from bench import common  # pylint: disable=g-import-not-at-top,wrong-import-position
from bench import recipe_study  # pylint: disable=g-import-not-at-top,wrong-import-position
from bench import robustness_cpu  # pylint: disable=g-import-not-at-top,wrong-import-position

# Each study: (its rows, the rows timed by default with the reference first, the results name).
STUDIES = {
    'robustness_cpu': (robustness_cpu.ROWS, ['agkd_bml', 'at_eqt', 'fs_eqt', 'bilateral_eqt'],
                       'equal_time_timing'),
    # A row that differs from another by --seed only costs what that one costs: not timed again.
    'recipe': (recipe_study.ROWS,
               [r.key for r in recipe_study.ROWS if not r.is_teacher and not r.same_cost_as],
               'recipe_study_timing'),
}
flags.DEFINE_enum('study', 'robustness_cpu', list(STUDIES), 'Whose rows to time: the CPU '
                  'table\'s equal-time rows (bench/robustness_cpu.py) or the AGKD-BML recipe '
                  'study\'s (bench/recipe_study.py).')
flags.DEFINE_list('timing_rows', [], 'Rows of the study to time; the first is the reference '
                  '(default: the study\'s rows, AGKD-BML first).')
flags.DEFINE_integer('steps', 8, 'Timed training steps per row and round.')
flags.DEFINE_integer('rounds', 4, 'Rounds; each starts with a different row.')
flags.DEFINE_string('dataset', 'folder:../shared/data/cifar10-jpeg',
                    'Data (falls back to synthetic:32 when the shared folder is absent).')
FLAGS = flags.FLAGS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Settings of a run, not of its training step.
_NOT_STEP = {'model_dir', 'dataset', 'data_dir', 'teacher_dir', 'init_from', 'train_examples',
             'test_examples', 'epochs', 'verbose', 'eval_every', 'eval_examples',
             'eval_attack_steps', 'checkpoint_every_steps', 'lr_decay_epochs'}


def _flagfile_args(path):
  """A flagfile's --flags in order, a nested --flagfile's in its place (as absl reads them)."""
  with open(os.path.join(ROOT, path)) as f:
    lines = [line.strip() for line in f]
  args = []
  for line in lines:
    if line.startswith('--flagfile='):
      args += _flagfile_args(line.partition('=')[2])
    elif line.startswith('--'):
      args.append(line)
  return args


def row_config(row):
  """The TrainConfig fields a row's flagfile and extra flags set, parsed as the binary does."""
  types = {f.name: type(f.default) for f in dataclasses.fields(train_lib.TrainConfig)}
  values = {}
  for arg in _flagfile_args(row.flagfile) + list(row.extra):
    name, _, text = arg[2:].partition('=')
    if name not in types or name in _NOT_STEP:
      continue
    kind = types[name]
    if kind is bool:
      values[name] = text.lower() in ('true', '1', '')
    elif kind is int:
      values[name] = int(text)
    elif kind in (float, type(None)):  # label_smoothing is Optional[float].
      values[name] = agkd_flags.parse_fraction(text)
    else:
      values[name] = text
  return values


def main(argv):
  del argv
  study_rows, default_rows, name = STUDIES[FLAGS.study]
  by_key = {r.key: r for r in study_rows}
  unknown = [k for k in FLAGS.timing_rows if k not in by_key]
  if unknown:
    raise app.UsageError(f'unknown rows {unknown} of --study={FLAGS.study}; valid: '
                         f'{", ".join(by_key)}')
  rows = [by_key[k] for k in FLAGS.timing_rows or default_rows]
  configs = {r.key: row_config(r) for r in rows}
  batch = configs[rows[0].key].get('batch_size', 128)
  n = batch * (FLAGS.steps + 1) * 2
  try:
    splits = data.load(FLAGS.dataset, train_examples=n, test_examples=100)
  except agkd_tf.core.errors.UserError:
    splits = data.load('synthetic:32', train_examples=n, test_examples=100)
  steps = {}
  for row in rows:
    c = dict(configs[row.key])
    _, steps[row.key] = common.build_training(c.pop('method'), c.pop('model'), splits,
                                              c.pop('attack_steps'), overrides=c)

  def images_per_sec(key, epoch):
    it = iter(pipeline.train_dataset(splits.x_train, splits.y_train, batch, epoch, 0))
    float(steps[key](it)['loss'])  # Warm-up (tracing on the first round) outside the window.
    start = time.perf_counter()
    for _ in range(FLAGS.steps):
      float(steps[key](it)['loss'])
    return FLAGS.steps * batch / (time.perf_counter() - start)

  ips = {r.key: [] for r in rows}
  ratios = {r.key: [] for r in rows}
  ref = rows[0].key
  for r in range(FLAGS.rounds):
    # Rotate the order, so that drifting load hits every row alike.
    order = rows[r % len(rows):] + rows[:r % len(rows)]
    measured = {row.key: images_per_sec(row.key, r) for row in order}
    for key, value in measured.items():
      ips[key].append(value)
      ratios[key].append(measured[ref] / value)
    print(f'round {r}: ' + ', '.join(f'{k} {v:.1f} img/s' for k, v in measured.items()),
          flush=True)
  table = []
  for row in rows:
    c = configs[row.key]
    method = row.name if FLAGS.study == 'recipe' else f'{row.name} K={c["attack_steps"]}'
    table.append({'row': row.key, 'method': method,
                  'attack_steps': c['attack_steps'], 'img_per_s': statistics.median(ips[row.key]),
                  'time_ratio': statistics.median(ratios[row.key]),
                  'time_ratio_min': min(ratios[row.key]),
                  'time_ratio_max': max(ratios[row.key])})
  common.write(name, table,
               [('row', 'row'), ('method', 'method'), ('img/s (median)', 'img_per_s'),
                (f'time per image / {rows[0].key} (median)', 'time_ratio'),
                ('min', 'time_ratio_min'),
                ('max', 'time_ratio_max')],
               notes=(f'Training steps of each row\'s recipe ({rows[0].flagfile} and the rows\' '
                      f'flagfiles), {batch} images a step, {FLAGS.steps} timed steps per row in '
                      f'each of {FLAGS.rounds} rotating rounds, float32, data {splits.name}. Time '
                      f'ratio = {rows[0].key} img/s / the row\'s img/s in the same round: 1.0 '
                      'is an equal epoch time.'))


if __name__ == '__main__':
  app.run(main)
