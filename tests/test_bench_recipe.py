"""The AGKD-BML recipe study driver (bench/recipe_study.py) and its equal-time timing.

The driver must train each row from its flagfile with the teacher and start taken from the study's
own runs, wait for a teacher instead of failing, stop at its time limit so a chunk can resume,
table only figures its runs wrote, and publish each evaluated row's SavedModel. The end-to-end
test runs the real binaries on the shared CIFAR-10 folder, shrunk to a few steps and images.
"""

import json
import os
import shutil
import subprocess
import sys

from tests.conftest import REPO

sys.path.insert(0, REPO)

# pylint: disable=g-import-not-at-top,wrong-import-position
from bench import recipe_study
# pylint: enable=g-import-not-at-top,wrong-import-position

_DRIVER = os.path.join(REPO, 'bench', 'recipe_study.py')


def _driver(tmp_path, *args):
  return subprocess.run(
      [sys.executable, _DRIVER, f'--runs_dir={tmp_path / "runs"}',
       f'--results_dir={tmp_path / "results"}', f'--models_dir={tmp_path / "models"}',
       '--name=study', *args], cwd=REPO, capture_output=True, text=True, timeout=900)


def _flag_values(flagfile):
  with open(os.path.join(REPO, flagfile)) as f:
    return dict(l.strip()[2:].split('=', 1) for l in f if l.startswith('--'))


def test_rows_name_their_flagfiles_teachers_and_starts_consistently():
  keys = [r.key for r in recipe_study.ROWS]
  assert len(keys) == len(set(keys))
  assert {'teacher_ls05', 'teacher_ls0', 'agkd_bml_k10', 'agkd_bml_k5', 'agkd_bml_k2',
          'agkd_bml_k10_teacher_ls0', 'at10', 'at10_init_teacher', 'trades10',
          'agkd_bml_k10_trades', 'agkd_bml_k10_untargeted',
          'agkd_bml_k4_trades_untargeted', 'trades10_seed1',
          'agkd_bml_k4_trades_untargeted_seed1'} == set(keys)
  for i, row in enumerate(recipe_study.ROWS):
    values = _flag_values(row.flagfile)
    if row.same_cost_as:
      # A second seed: the first seed's flagfile and --seed, nothing else, so its cost is the same.
      same = recipe_study.BY_KEY[row.same_cost_as]
      assert values == {'flagfile': same.flagfile, 'seed': '1'}, row.key
      assert (row.teacher, row.init_from, row.ours) == (same.teacher, same.init_from, same.ours)
      values = _flag_values(same.flagfile)
    for dep, flag in ((row.teacher, 'teacher_dir'), (row.init_from, 'init_from')):
      if dep:
        # The dependency is a teacher row listed earlier, so one pass in order trains it first,
        # and the flagfile's own path (for users running it by hand) names the same run.
        assert recipe_study.BY_KEY[dep].is_teacher and keys.index(dep) < i, row.key
    if row.teacher == 'teacher_ls05':
      assert values['teacher_dir'] == 'runs/recipe/teacher_ls05', row.key
    if row.init_from:
      assert values['init_from'] == f'runs/recipe/{row.init_from}', row.key
    assert row.ours == ('agkd_loss' in values or 'agkd_attack' in values), row.key
  # The two teachers differ in their label smoothing only.
  assert _flag_values('flags/bench_cpu/recipe/teacher_ls05.cfg') == {
      'flagfile': recipe_study.BY_KEY['teacher_ls0'].flagfile, 'label_smoothing': '0.5'}
  assert _flag_values(recipe_study.BY_KEY['teacher_ls0'].flagfile)['label_smoothing'] == '0.0'


def test_equal_time_reads_a_recipe_rows_method_settings():
  # pylint: disable=g-import-not-at-top
  from bench import equal_time
  # pylint: enable=g-import-not-at-top
  # A nested --flagfile is read in its place, as absl reads it: a second seed differs by --seed.
  first = equal_time.row_config(recipe_study.BY_KEY['agkd_bml_k4_trades_untargeted'])
  second = equal_time.row_config(recipe_study.BY_KEY['agkd_bml_k4_trades_untargeted_seed1'])
  assert second == dict(first, seed=1) and first['attack_steps'] == 4
  trades = equal_time.row_config(recipe_study.BY_KEY['agkd_bml_k10_trades'])
  assert trades['method'] == 'agkd_bml' and trades['agkd_loss'] == 'trades'
  assert trades['attack_steps'] == 10 and trades['trades_beta'] == 6.0
  assert 'teacher_dir' not in trades and 'epochs' not in trades
  at = equal_time.row_config(recipe_study.BY_KEY['at10_init_teacher'])
  assert at['method'] == 'at' and 'init_from' not in at
  assert equal_time.STUDIES['recipe'][1][0] == 'agkd_bml_k10'  # The study's reference row.
  proc = subprocess.run([sys.executable, os.path.join(REPO, 'bench', 'equal_time.py'),
                         '--study=recipe', '--timing_rows=agkd_bml_k10,um'], cwd=REPO,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0 and "unknown rows ['um'] of --study=recipe" in proc.stderr


def test_a_time_limit_stops_the_running_binary_and_the_next_rows(tmp_path):
  script = (
      'import sys, time\n'
      f'sys.path.insert(0, {REPO!r})\n'
      'from bench import recipe_study as r\n'
      'r.define_flags()\n'
      'r.FLAGS(["x", "--max_minutes=0.02"])\n'
      'start = time.time()\n'
      f'code, _ = r._call(["sleep", "60"], {str(tmp_path / "log")!r})\n'
      'print(code, round(time.time() - start))\n')
  proc = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                        timeout=120)
  assert proc.returncode == 0, proc.stderr
  code, seconds = proc.stdout.splitlines()[-1].split()
  assert code == 'None' and int(seconds) < 10
  assert '$ sleep 60' in (tmp_path / 'log').read_text()
  # The first row's training is stopped (it resumes next time); no later row is started.
  proc = _driver(tmp_path, '--max_minutes=0.05', '--stages=train,eval')
  assert proc.returncode == 0, proc.stderr
  assert 'teacher_ls05: training stopped at the time limit' in proc.stdout
  assert proc.stdout.rstrip().endswith('--max_minutes=0.05 reached; rerun to go on')
  assert os.listdir(tmp_path / 'runs') == ['teacher_ls05']


def test_driver_trains_evaluates_tables_publishes_and_resumes(tmp_path, shared_cifar):
  del shared_cifar
  readme = tmp_path / 'README.md'
  readme.write_text(f'intro\n{recipe_study.README_BEGIN}\nstale\n<!-- recipe_study:end -->\n'
                    'outro\n')
  args = ['--rows=teacher_ls05,agkd_bml_k2,at10_init_teacher',
          '--train_flags=--train_examples=100,--test_examples=100,--max_steps=2,'
          '--batch_size=16,--eval_examples=20,--checkpoint_every_steps=1',
          '--num_examples=20', f'--readme={readme}']
  # AGKD-BML waits for its teacher: with the teacher not yet trained, it is skipped.
  proc = _driver(tmp_path, '--rows=agkd_bml_k2', '--stages=train', *args[1:])
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert 'agkd_bml_k2: needs teacher_ls05 trained first; skipped' in proc.stdout
  proc = _driver(tmp_path, *args, '--stages=train,eval')
  assert proc.returncode == 0, proc.stdout + proc.stderr
  runs = tmp_path / 'runs'
  # The student's teacher and the start are the study's own runs, not the flagfile's paths.
  student_flags = json.loads((runs / 'agkd_bml_k2' / 'flags.json').read_text())
  assert student_flags['teacher_dir'] == str(runs / 'teacher_ls05')
  assert json.loads((runs / 'at10_init_teacher' / 'flags.json').read_text())['init_from'] == (
      str(runs / 'teacher_ls05'))
  teacher_eval = json.loads((runs / 'teacher_ls05' / 'eval_study' / 'eval.json').read_text())
  assert set(teacher_eval['accuracy']) >= {'clean', 'pgd20'}
  assert 'aa' not in teacher_eval['accuracy']  # Teachers: clean and PGD-20 only.
  student_eval = json.loads((runs / 'agkd_bml_k2' / 'eval_study' / 'eval.json').read_text())
  assert set(student_eval['accuracy']) >= {'clean', 'fgsm', 'pgd20', 'cw20', 'aa'}

  proc = _driver(tmp_path, *args, '--stages=train,eval,table,readme,export')
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert 'teacher_ls05: trained already' in proc.stdout
  assert 'agkd_bml_k2: trained already' in proc.stdout
  assert 'agkd_bml_k2: evaluated already' in proc.stdout
  table = json.loads((tmp_path / 'results' / 'study.json').read_text())
  assert table['missing'] == []
  by_row = {r['row']: r for r in table['rows']}
  assert by_row['agkd_bml_k2']['aa'] == round(student_eval['accuracy']['aa'], 2)
  assert by_row['agkd_bml_k2']['attack_steps'] == 2 and by_row['teacher_ls05']['attack_steps'] \
      is None
  assert by_row['at10_init_teacher']['train_examples'] == 100
  text = readme.read_text()
  assert text.startswith('intro\n') and text.endswith('outro\n') and 'stale' not in text
  assert '| AGKD-BML K=2, LS-0.5 teacher | 2 |' in text
  for key in ('teacher_ls05', 'agkd_bml_k2', 'at10_init_teacher'):
    assert (tmp_path / 'models' / f'recipe_{key}' / 'saved_model.pb').is_file(), key
  assert not list((tmp_path / 'models').glob('*.tmp'))
  # A published row is not exported again from the same training (same weights, new bytes).
  proc = _driver(tmp_path, *args, '--stages=export')
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert 'agkd_bml_k2: exported already' in proc.stdout


def _fake_run(directory, steps, result=False):
  """A run directory with flags.json and one checkpoint per step in `steps`."""
  # pylint: disable=g-import-not-at-top
  import tensorflow as tf
  # pylint: enable=g-import-not-at-top
  os.makedirs(directory, exist_ok=True)
  (directory / 'flags.json').write_text('{"method": "natural"}')
  (directory / 'train.log').write_text('epoch 1\n')
  (directory / 'summaries').mkdir(exist_ok=True)
  (directory / 'summaries' / 'events').write_text('tensorboard')
  value = tf.Variable(0.0)
  manager = tf.train.CheckpointManager(tf.train.Checkpoint(v=value),
                                       str(directory / 'checkpoints'), max_to_keep=5)
  for step in steps:
    value.assign(float(step))
    manager.save(checkpoint_number=step)
  if result:
    (directory / 'result.json').write_text('{"clean_accuracy": 0.5}')


def _restored_value(directory):
  # pylint: disable=g-import-not-at-top
  import tensorflow as tf
  # pylint: enable=g-import-not-at-top
  value = tf.Variable(-1.0)
  latest = tf.train.latest_checkpoint(str(directory / 'checkpoints'))
  tf.train.Checkpoint(v=value).restore(latest).assert_consumed()
  return latest.rsplit('-', 1)[1], value.numpy()


def test_park_and_unpark_carry_a_run_to_the_next_machine(tmp_path):
  runs, park = tmp_path / 'runs', tmp_path / 'parked'
  _fake_run(runs / 'teacher_ls05', [40, 80, 120], result=True)
  _fake_run(runs / 'agkd_bml_k10', [40, 80])
  proc = _driver(tmp_path, '--stages=park', f'--park_dir={park}')
  assert proc.returncode == 0, proc.stderr
  assert 'teacher_ls05: parked in' in proc.stdout and '(trained)' in proc.stdout
  assert 'agkd_bml_k10: parked in' in proc.stdout and '(checkpoint 80)' in proc.stdout
  # Only what resuming and tabling need: the newest checkpoint, no summaries.
  assert sorted(os.listdir(park / 'agkd_bml_k10')) == ['checkpoints', 'flags.json', 'train.log']
  assert not [n for n in os.listdir(park / 'agkd_bml_k10' / 'checkpoints') if 'ckpt-40' in n]
  assert (park / 'teacher_ls05' / 'result.json').is_file()
  assert not list(park.glob('*.tmp')) and not list(park.glob('*.old'))

  # A new machine: nothing in runs/. unpark restores the runs at their parked checkpoints.
  shutil.rmtree(runs)
  proc = _driver(tmp_path, '--stages=unpark', f'--park_dir={park}')
  assert proc.returncode == 0, proc.stderr
  assert 'agkd_bml_k10: unparked into' in proc.stdout
  assert _restored_value(runs / 'agkd_bml_k10') == ('80', 80.0)
  assert _restored_value(runs / 'teacher_ls05') == ('120', 120.0)
  assert (runs / 'teacher_ls05' / 'result.json').is_file()

  # The run goes on; parking again replaces the parked state, unparking leaves the newer run.
  _fake_run(runs / 'agkd_bml_k10', [160])
  proc = _driver(tmp_path, '--stages=unpark,park', f'--park_dir={park}')
  assert proc.returncode == 0, proc.stderr
  assert 'agkd_bml_k10: the run in' in proc.stdout and 'left as it is' in proc.stdout
  assert 'teacher_ls05: parked already' in proc.stdout
  assert _restored_value(park / 'agkd_bml_k10') == ('160', 160.0)
  assert _restored_value(runs / 'agkd_bml_k10') == ('160', 160.0)

  # A re-evaluation rewrites eval.json at the same checkpoint: parking carries it over, and
  # parking again with nothing new leaves the park alone.
  for text in ('{"clean": 0.5}', '{"clean": 0.5, "correct_per_image": {"clean": "01"}}'):
    (runs / 'teacher_ls05' / 'eval_study').mkdir(exist_ok=True)
    (runs / 'teacher_ls05' / 'eval_study' / 'eval.json').write_text(text)
    (runs / 'teacher_ls05' / 'eval_study' / 'settings.json').write_text('{}')
    proc = _driver(tmp_path, '--stages=park', f'--park_dir={park}')
    assert proc.returncode == 0, proc.stderr
    assert 'teacher_ls05: parked in' in proc.stdout and '(trained, evaluated)' in proc.stdout
    assert (park / 'teacher_ls05' / 'eval_study' / 'eval.json').read_text() == text
  proc = _driver(tmp_path, '--stages=park', f'--park_dir={park}')
  assert 'teacher_ls05: parked already' in proc.stdout
  assert _restored_value(park / 'teacher_ls05') == ('120', 120.0)

  proc = _driver(tmp_path, '--stages=parc', f'--park_dir={park}')
  assert proc.returncode != 0 and "unknown stages ['parc']" in proc.stderr


def _row(aa, clean, n=500):
  return {'aa': aa, 'aa_n': n, 'clean': clean, 'cw20': aa + 1, 'pgd20': aa + 2}


def test_diagnosis_takes_each_ingredient_from_the_two_rows_that_differ_in_it():
  by_row = {'agkd_bml_k10': _row(30.0, 60.0), 'agkd_bml_k2': _row(20.0, 66.0),
            'trades10': _row(29.0, 58.0), 'agkd_bml_k10_trades': _row(33.0, 56.0),
            'agkd_bml_k10_untargeted': _row(31.5, 52.0)}
  cpu = {'agkd_bml': _row(10.8, 65.4)}
  items = {(d['row'], d['baseline']): d for d in recipe_study.diagnosis(by_row, cpu)}
  k = items[('agkd_bml_k10', 'agkd_bml_k2')]
  assert (k['aa'], k['clean'], k['cw20'], k['needs']) == (10.0, -6.0, 10.0, [])
  # sqrt(.3 * .7 / 500 + .2 * .8 / 500) = 2.72 points; 10 points is beyond twice that.
  assert k['aa_se'] == 2.72 and k['beyond_noise']
  assert items[('agkd_bml_k10', 'trades10')]['beyond_noise'] is False  # 1 point: noise.
  assert items[('agkd_bml_k2', 'cpu:agkd_bml')]['aa'] == 9.2  # The CPU table's row.
  missing = items[('agkd_bml_k10', 'agkd_bml_k10_teacher_ls0')]
  assert missing['needs'] == ['agkd_bml_k10_teacher_ls0'] and missing['aa'] is None

  # The aim: >= 2 AA points over TRADES-10, <= 5 clean points lost, at equal time.
  ratios = {'agkd_bml_k10': 1.0, 'trades10': 0.9, 'agkd_bml_k10_trades': 0.95,
            'agkd_bml_k10_untargeted': 0.99}
  goal = {g['row']: g for g in recipe_study.goal(by_row, ratios)}
  assert goal['agkd_bml_k10_trades'] == {
      'row': 'agkd_bml_k10_trades', 'reference': 'trades10', 'aa_above_trades': 4.0,
      'clean_loss': 2.0, 'time_vs_trades': 1.06, 'met': True}
  assert goal['agkd_bml_k10_untargeted']['met'] is False  # 6 clean points lost.
  assert goal['agkd_bml_k10']['met'] is False  # 1 AA point only.
  assert 'trades10' not in goal
  # Without the same-process timing, equal time is unknown: not judged.
  assert recipe_study.goal(by_row, {})[0]['met'] is None
  lines = '\n'.join(recipe_study.diagnosis_lines(
      {'diagnosis': list(items.values()), 'goal': list(goal.values())}))
  assert '| +10.00 | 2.72 | +10.00 | +10.00 | -6.00 | - |' in lines
  timed = {(d['row'], d['baseline']): d for d in recipe_study.diagnosis(by_row, cpu, ratios)}
  assert timed[('agkd_bml_k10', 'trades10')]['time'] == 1.11  # 1.0 / 0.9.
  assert timed[('agkd_bml_k2', 'cpu:agkd_bml')]['time'] is None  # Not timed together.
  assert 'needs agkd_bml_k10_teacher_ls0' in lines and '| yes |' in lines


def _reading(by_row, ratios=None):
  # pylint: disable=g-import-not-at-top
  from bench import recipe_reading
  # pylint: enable=g-import-not-at-top
  ratios = ratios or {}
  ours = {r.key for r in recipe_study.ROWS if r.ours}
  rows = [dict(r, row=k, method=k + (' (ours)' if k in ours else '')) for k, r in by_row.items()]
  result = {'rows': rows, 'diagnosis': recipe_study.diagnosis(by_row, {}, ratios),
            'goal': recipe_study.goal(by_row, ratios), 'seeds': recipe_study.seeds(by_row)}
  return '\n'.join(recipe_reading.reading_lines(result))


def test_reading_decides_its_verdicts_from_the_figures():
  base = {'at10': _row(25.0, 46.0), 'trades10': _row(21.0, 52.0)}
  ratios = {'agkd_bml_k10': 1.0, 'at10': 0.44, 'trades10': 0.56, 'agkd_bml_k10_trades': 0.55}
  loses = _reading(dict(base, agkd_bml_k10=_row(13.0, 45.0)), ratios)
  assert 'is 12.0 AA points below (s.e. 2.5) AT-10' in loses
  assert 'It loses to both under AutoAttack, at 2.27x and 1.79x' in loses
  assert 'it is not measured yet' in loses  # The loss's share needs agkd_bml_k10_trades.
  wins = _reading(dict(base, agkd_bml_k10=_row(35.0, 45.0)), ratios)
  assert 'It beats both' in wins
  # One point above AT-10 is within noise: no verdict either way.
  tie = _reading(dict(base, agkd_bml_k10=_row(26.0, 45.0)))
  assert 'It is not separated from both' in tie and 'within noise' in tie
  # Our variant: measured against the aim, and the loss's test reads its PGD-AA gap.
  variant = _reading(dict(base, agkd_bml_k10=_row(13.0, 45.0),
                          agkd_bml_k10_trades=_row(24.0, 50.0)), ratios)
  assert '`agkd_bml_k10_trades` +3.0 AA and -2.0 clean against TRADES-10 at 0.98x' in variant
  assert 'The aim is met by `agkd_bml_k10_trades`.' in variant
  assert 'its PGD-20 exceeds AA by 2.0 points (official 2.0)' in variant
  assert ("With the TRADES term the official recipe's 8.0-point AA deficit to TRADES-10 is gone "
          '(it gains 11.0): the loss accounts for all of it.') in variant
  part = _reading(dict(base, agkd_bml_k10=_row(13.0, 45.0),
                       agkd_bml_k10_trades=_row(20.6, 50.8)), ratios)
  assert ('The loss so accounts for 7.6 of the 8.0 AA points by which the official recipe trails '
          'TRADES-10.') in part
  short = _reading(dict(base, agkd_bml_k10=_row(13.0, 45.0),
                        agkd_bml_k10_trades=_row(22.0, 50.0)), ratios)
  assert 'No variant tried meets the aim yet.' in short
  # Meeting the aim's figures by less than two standard errors is said to be inconclusive.
  close = _reading(dict(base, agkd_bml_k10=_row(13.0, 45.0),
                        agkd_bml_k4_trades_untargeted=_row(23.4, 58.8)),
                   dict(ratios, agkd_bml_k4_trades_untargeted=0.57))
  assert '`agkd_bml_k4_trades_untargeted` +2.4 AA (s.e. 2.6, within noise)' in close
  assert 'The aim is met by `agkd_bml_k4_trades_untargeted`. For' in close
  assert 'not yet conclusive' in close
  # The study's strongest row is named even when it is not AGKD-BML.
  assert ('The most robust row of the study under AA is `at10` (25.0% AA, 46.0% clean). The best '
          'AGKD-BML row, `agkd_bml_k4_trades_untargeted`, is 1.6 AA points below it and +12.8 in '
          'clean accuracy.') in close


_PUBLISHED = os.path.join(REPO, 'bench', 'results', 'models', 'recipe_teacher_ls0')


def test_published_models_check_runs_the_readers_command(tmp_path, shared_cifar):
  del shared_cifar
  script = os.path.join(REPO, 'bench', 'recipe_published.py')
  env = {**os.environ, 'AGKD_BENCH_RESULTS': str(tmp_path / 'results')}
  proc = subprocess.run([sys.executable, script, f'--models_dir={tmp_path / "none"}'], cwd=REPO,
                        capture_output=True, text=True, timeout=120, env=env)
  assert proc.returncode != 0 and 'Traceback' not in proc.stderr
  assert proc.stderr.strip().splitlines()[-1].startswith('error: no published SavedModel under')
  models = tmp_path / 'models'
  shutil.copytree(_PUBLISHED, models / 'recipe_teacher_ls0')
  readme = tmp_path / 'README.md'
  readme.write_text('a\n<!-- recipe_published:begin x -->\nstale\n<!-- recipe_published:end -->\n')
  proc = subprocess.run([sys.executable, script, f'--models_dir={models}', '--attacks=clean,pgd5',
                         '--num_examples=20', '--readme', f'--readme_file={readme}'],
                        cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
  assert proc.returncode == 0, proc.stderr[-2000:]
  (row,) = json.loads((tmp_path / 'results' / 'recipe_published.json').read_text())['rows']
  assert row['row'] == 'teacher_ls0' and row['exit_code'] == 0
  assert row['clean'] > 50 and row['pgd5'] < row['clean']  # A natural teacher, on 20 images.
  assert row['command'] == (f'python -m agkd_tf.evaluate --saved_model={models}/recipe_teacher_ls0 '
                            '--dataset=folder:../shared/data/cifar10-jpeg --attacks=clean,pgd5 '
                            '--num_examples=20 --output_dir=OUT')
  text = readme.read_text()
  assert 'stale' not in text and '| `teacher_ls0` |' in text

  # A later check of one new row keeps the earlier rows checked with the same settings.
  shutil.copytree(_PUBLISHED, models / 'recipe_teacher_ls05')
  proc = subprocess.run([sys.executable, script, f'--models_dir={models}', '--attacks=clean,pgd5',
                         '--num_examples=20', '--rows=teacher_ls05', '--readme',
                         f'--readme_file={readme}'],
                        cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
  assert proc.returncode == 0, proc.stderr[-2000:]
  rows = json.loads((tmp_path / 'results' / 'recipe_published.json').read_text())['rows']
  assert [r['row'] for r in rows] == ['teacher_ls0', 'teacher_ls05']
  assert rows[0]['clean'] == row['clean'] and rows[0]['checked'] == row['checked']
  assert '1 rows carried over' in readme.read_text()
  # Other images: another check, so the earlier rows are not carried over.
  proc = subprocess.run([sys.executable, script, f'--models_dir={models}', '--attacks=clean',
                         '--num_examples=10', '--rows=teacher_ls05'],
                        cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
  assert proc.returncode == 0, proc.stderr[-2000:]
  rows = json.loads((tmp_path / 'results' / 'recipe_published.json').read_text())['rows']
  assert [r['row'] for r in rows] == ['teacher_ls05']


def test_the_aa_standard_error_is_paired_where_both_rows_kept_each_images_verdict():
  # 500 images; the two rows agree on all but 12 (11 robust only under a, 1 only under b).
  a = dict(_row(24.0, 60.0), aa_verdicts='1' * 120 + '0' * 380)
  b = dict(_row(22.0, 55.0), aa_verdicts='1' * 109 + '0' * 11 + '1' + '0' * 379)
  se, paired = recipe_study._standard_error(a, b)  # pylint: disable=protected-access
  # d = +1 on 11 images, -1 on 1: var = 12/500 - (10/500)^2; s.e. = sqrt(var / 500).
  assert paired and se == round(100 * ((12 / 500 - (10 / 500) ** 2) / 500) ** 0.5, 2) == 0.69
  unpaired, paired = recipe_study._standard_error(_row(24.0, 60.0), b)  # pylint: disable=protected-access
  assert not paired and unpaired == 2.66
  # The same 2-point gap: within noise unpaired, beyond it paired.
  items = {(d['row'], d['baseline']): d for d in recipe_study.diagnosis(
      {'agkd_bml_k4_trades_untargeted': a, 'trades10': b}, {})}
  d = items[('agkd_bml_k4_trades_untargeted', 'trades10')]
  assert d['aa_se_paired'] and d['beyond_noise']
  lines = '\n'.join(recipe_study.diagnosis_lines({'diagnosis': [d], 'goal': []}))
  assert '| +2.00 | 0.69 (paired) |' in lines


def test_the_second_seed_is_judged_against_its_own_trades_and_averaged_image_by_image():
  # Four images. Seed 0: a breaks 1 fewer image than TRADES (+25 points); seed 1: level.
  first = {'agkd_bml_k4_trades_untargeted': dict(_row(50.0, 60.0, n=4), aa_verdicts='1100'),
           'trades10': dict(_row(25.0, 52.0, n=4), aa_verdicts='1000')}
  second = {'agkd_bml_k4_trades_untargeted_seed1': dict(_row(25.0, 58.0, n=4), aa_verdicts='0010'),
            'trades10_seed1': dict(_row(25.0, 56.0, n=4), aa_verdicts='0010')}
  assert recipe_study.seeds(first) is None  # Not until every seed is tabled.
  rep = recipe_study.seeds({**first, **second})
  assert [p['aa'] for p in rep['per_seed']] == [25.0, 0.0] and rep['spread'] == 25.0
  assert (rep['aa'], rep['clean']) == (12.5, 5.0)
  # Per image, seed-averaged differences (0, .5, 0, 0): mean .125, var .25/4 - .125^2.
  assert rep['aa_se_paired'] and rep['aa_se'] == round(
      100 * ((0.0625 - 0.125 ** 2) / 4) ** 0.5, 2) == 10.83
  assert not rep['beyond_noise']
  # The second seed's row is held against TRADES-10 of its own seed, not the first's.
  ratios = {'agkd_bml_k4_trades_untargeted': 0.57, 'trades10': 0.56,
            'agkd_bml_k4_trades_untargeted_seed1': 0.57, 'trades10_seed1': 0.56}
  goal = {g['row']: g for g in recipe_study.goal({**first, **second}, ratios)}
  seed1 = goal['agkd_bml_k4_trades_untargeted_seed1']
  assert seed1['reference'] == 'trades10_seed1' and seed1['aa_above_trades'] == 0.0
  assert seed1['met'] is False and goal['agkd_bml_k4_trades_untargeted']['met'] is True
  text = _reading({**first, **second}, ratios)
  assert '`agkd_bml_k4_trades_untargeted_seed1` +0.0 AA' in text
  assert 'against `trades10_seed1`' in text
  assert 'seed 0: +25.0 AA, +8.0 clean; seed 1: +0.0 AA, +2.0 clean' in text
  assert 'does not confirm that it beats TRADES-10' in text
  # Both seeds 2+ points up, image by image beyond noise: the aim holds on the replicate.
  big = {k: dict(_row(v['aa'], v['clean'], n=400)) for k, v in {**first, **second}.items()}
  for k, up in (('agkd_bml_k4_trades_untargeted', 40), ('agkd_bml_k4_trades_untargeted_seed1', 36)):
    big[k]['aa_verdicts'] = '1' * up + '0' * (400 - up)
  for k in ('trades10', 'trades10_seed1'):
    big[k]['aa_verdicts'] = '0' * 400
  for k in big:
    big[k]['aa'] = 100 * big[k]['aa_verdicts'].count('1') / 400
  held = _reading(big, ratios)
  assert 'margin, +9.5 AA points, meets the aim' in held and 'holds on the replicate' in held


def test_the_cpu_table_points_users_to_the_replicated_configuration_of_ours():
  # pylint: disable=g-import-not-at-top
  from bench import robustness_cpu
  # pylint: enable=g-import-not-at-top
  by_row = {'agkd_bml_k4_trades_untargeted': _row(23.4, 58.8), 'trades10': _row(21.0, 51.6),
            'agkd_bml_k4_trades_untargeted_seed1': _row(24.0, 59.0),
            'trades10_seed1': _row(21.8, 52.0)}
  study = {k: dict(r, row=k) for k, r in by_row.items()}
  text = robustness_cpu._best_of_ours({'seeds': recipe_study.seeds(by_row)}, study)  # pylint: disable=protected-access
  assert '`flags/bench_cpu/recipe/agkd_bml_k4_trades_untargeted.cfg`' in text
  assert ('seed 0: AA 23.40% and clean 58.80% against 21.00% and 51.60%; seed 1: AA 24.00% and '
          'clean 59.00% against 21.80% and 52.00% (+2.3 AA points over the seeds') in text
  assert robustness_cpu._best_of_ours({}, study) == ''  # pylint: disable=protected-access
