r"""Re-evaluates every published recipe-study SavedModel with the command a reader would run.

The recipe study (bench/recipe_study.py; Wang et al., "AGKD-BML: Defense Against Adversarial
Attack by Attention Guided Knowledge Distillation and Bi-directional Metric Learning", ICCV 2021,
against AT and TRADES) publishes each evaluated row's SavedModel under
bench/results/models/recipe_<row>/, so that anyone can re-evaluate a row without retraining. This
script runs exactly that, one row at a time, in a fresh process each:

  python -m agkd_tf.evaluate --saved_model=bench/results/models/recipe_<row> \
      --dataset=folder:../shared/data/cifar10-jpeg --attacks=clean,aa --num_examples=200 \
      --output_dir=OUT

and tables what each run reported (clean and AutoAttack accuracy on those 200 images, seconds),
with the command, in bench/results/recipe_published.{json,md} and the README block of the same
name. A row whose evaluation fails is tabled as failed with the last line of its output, and the
script exits non-zero.

  python bench/recipe_published.py [--rows=at10,trades10] [--readme]
"""

import json
import os
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common  # pylint: disable=g-import-not-at-top,wrong-import-position

FLAGS = flags.FLAGS
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PREFIX = 'recipe_'


def define_flags():
  flags.DEFINE_string('models_dir', os.path.join('bench', 'results', 'models'),
                      'Where the published SavedModels are (recipe_<row>/), relative to the '
                      'repository root or absolute.')
  flags.DEFINE_list('rows', [], 'Rows to check (default: every published recipe_<row>).')
  flags.DEFINE_string('dataset', 'folder:../shared/data/cifar10-jpeg', 'Test images.')
  flags.DEFINE_list('attacks', ['clean', 'aa'], 'Attacks of the check.')
  flags.DEFINE_integer('num_examples', 200, 'Class-balanced test images.')
  flags.DEFINE_string('output_dir', None, 'Where each evaluation writes (default: a temporary '
                      'folder, removed after).')
  flags.DEFINE_bool('readme', False, 'Also rewrite the README block recipe_published.')
  flags.DEFINE_string('readme_file', None, 'The README --readme edits (default: the repository\'s).')


def published_rows(models_dir):
  """Row keys of the published SavedModels (recipe_<row>/saved_model.pb), sorted."""
  root = os.path.join(ROOT, models_dir)
  if not os.path.isdir(root):
    return []
  return sorted(n[len(PREFIX):] for n in os.listdir(root) if n.startswith(PREFIX) and
                os.path.isfile(os.path.join(root, n, 'saved_model.pb')))


def evaluate_command(row, output_dir):
  """The reader's command for one published row (paths as a reader types them)."""
  return ['python', '-m', 'agkd_tf.evaluate',
          f'--saved_model={os.path.join(FLAGS.models_dir, PREFIX + row)}',
          f'--dataset={FLAGS.dataset}', f'--attacks={",".join(FLAGS.attacks)}',
          f'--num_examples={FLAGS.num_examples}', f'--output_dir={output_dir}']


def check(row, output_dir):
  """Runs the command for one row; its table row (accuracy per attack, seconds, or the error)."""
  cmd = evaluate_command(row, output_dir)
  start = time.time()
  proc = subprocess.run([sys.executable] + cmd[1:], cwd=ROOT, capture_output=True, text=True)
  out = {'row': row, 'command': ' '.join(cmd[:-1] + ['--output_dir=OUT']),
         'seconds': round(time.time() - start, 1), 'exit_code': proc.returncode}
  if proc.returncode != 0:
    lines = (proc.stderr or proc.stdout).strip().splitlines()
    out['error'] = lines[-1] if lines else f'exit {proc.returncode}'
    return out
  with open(os.path.join(output_dir, 'eval.json')) as f:
    accuracy = json.load(f)['accuracy']
  for attack in FLAGS.attacks:
    out[attack] = common.pct(accuracy.get(attack))
  return out


def _carried_over(rows):
  """The previous results of published rows not rerun now that ran the same command."""
  try:
    with open(os.path.join(common.RESULTS, 'recipe_published.json')) as f:
      previous = json.load(f)
  except (OSError, ValueError):
    return []
  published = set(published_rows(FLAGS.models_dir))
  date = previous.get('date')
  # The evaluate command names the model, images, dataset and attacks: equal commands, same check.
  return [dict(r, checked=r.get('checked', date)) for r in previous.get('rows', [])
          if r['row'] not in rows and r['row'] in published and
          r.get('command') == ' '.join(evaluate_command(r['row'], 'OUT'))]


def main(argv):
  del argv
  rows = FLAGS.rows or published_rows(FLAGS.models_dir)
  if not rows:
    raise SystemExit(f'error: no published SavedModel under {FLAGS.models_dir} '
                     f'({PREFIX}<row>/saved_model.pb); run bench/recipe_study.py --stages=export')
  missing = [r for r in rows if r not in published_rows(FLAGS.models_dir)]
  if missing:
    raise SystemExit(f'error: not published under {FLAGS.models_dir}: {", ".join(missing)}')
  scratch = None
  base = FLAGS.output_dir
  if base is None:
    scratch = tempfile.TemporaryDirectory(prefix='recipe_published_')
    base = scratch.name
  results = []
  for row in rows:
    result = check(row, os.path.join(base, row))
    results.append(result)
    print(f'{row}: ' + (f'failed: {result["error"]}' if 'error' in result else ', '.join(
        f'{a} {result[a]}' for a in FLAGS.attacks)) + f' ({result["seconds"]:.0f} s)', flush=True)
  if scratch is not None:
    scratch.cleanup()
  now = time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())
  for r in results:
    r['checked'] = now
  carried = _carried_over(rows) if FLAGS.rows else []
  results = sorted(results + carried, key=lambda r: r['row'])
  columns = ([('row', 'row')] + [(a, a) for a in FLAGS.attacks] +
             [('seconds', 'seconds'), ('exit code', 'exit_code'), ('checked', 'checked'),
              ('command', 'command')])
  common.write('recipe_published', results, columns, notes=(
      f'Each published recipe-study SavedModel, re-evaluated from {FLAGS.models_dir} by its '
      f'own evaluate process: accuracy (%) on {FLAGS.num_examples} class-balanced test images '
      f'of {FLAGS.dataset}, L-inf eps 8/255, AutoAttack standard.' + (
          f' {len(carried)} rows not in --rows are carried over from the previous results file '
          '(the same evaluate command); the checked column dates each row.'
          if carried else '')))
  if FLAGS.readme:
    lines = ['| published row | ' + ' | '.join(FLAGS.attacks) + ' | seconds | command |',
             '|---|' + '---|' * (len(FLAGS.attacks) + 2)]
    for r in results:
      figures = (['failed'] * len(FLAGS.attacks) if 'error' in r else
                 [common.cell(r.get(a)) for a in FLAGS.attacks])
      lines.append(f'| `{r["row"]}` | ' + ' | '.join(figures) +
                   f' | {r["seconds"]:.0f} | `{r["command"]}` |')
    lines += ['', f'Written by `{common.command()}` ({FLAGS.num_examples} images each)' + (
        f'; {len(carried)} rows carried over from an earlier run of the script, dated in '
        'bench/results/recipe_published.md.' if carried else '.')]
    common.readme_block('recipe_published', lines, FLAGS.readme_file)
  failed = [r['row'] for r in results if 'error' in r]
  if failed:
    raise SystemExit(f'error: the evaluation of {", ".join(failed)} failed (see '
                     'bench/results/recipe_published.md)')


if __name__ == '__main__':
  define_flags()
  app.run(main)
