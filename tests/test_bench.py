"""Benchmark drivers: the CPU robustness table and the GPU throughput script.

The table driver must train, evaluate, resume and tabulate; the GPU script must run tiny on the
CPU and refuse to write GPU results there.

The end-to-end test runs the real binaries on the shared CIFAR-10 folder, shrunk with
--train_flags/--eval_flags to a few steps and images so that it takes seconds, not the table's
hours.
"""

import json
import os
import shutil
import subprocess
import sys

import tensorflow as tf

from tests.conftest import REPO

_DRIVER = os.path.join(REPO, 'bench', 'robustness_cpu.py')


def _driver(tmp_path, *args):
  return subprocess.run(
      [sys.executable, _DRIVER, f'--runs_dir={tmp_path / "runs"}',
       f'--results_dir={tmp_path / "results"}', '--name=table', *args],
      cwd=REPO, capture_output=True, text=True, timeout=600)


def test_every_row_names_an_existing_flagfile():
  sys.path.insert(0, REPO)
  from bench import robustness_cpu  # pylint: disable=g-import-not-at-top
  keys = [r.key for r in robustness_cpu.ROWS]
  assert len(keys) == len(set(keys))
  assert {'um', 'at', 'alp', 'trades', 'mart', 'sml', 'bilateral', 'fs', 'cat', 'agkd_bml',
          'agkd_only', 'bml_only', 'agkd_sml', 'att_gradcam_orig', 'att_gradcam_false',
          'att_cam_avg', 'at_eqt', 'fs_eqt', 'bilateral_eqt'} == set(keys)
  for row in robustness_cpu.ROWS:
    assert os.path.isfile(os.path.join(REPO, row.flagfile)), row.flagfile
  # An equal-time row stretches its base row's attack: more steps, same flagfile.
  by_key = {r.key: r for r in robustness_cpu.ROWS}
  for key in ('at', 'fs', 'bilateral'):
    base, stretched = by_key[key], by_key[f'{key}_eqt']
    assert stretched.equal_time and not base.equal_time
    assert stretched.flagfile == base.flagfile
    assert f'--attack_steps={robustness_cpu.EQUAL_TIME_STEPS[key]}' in stretched.extra
    assert robustness_cpu.EQUAL_TIME_STEPS[key] > 1


def _fake_row(runs, key, images_per_sec, steps, accuracy):
  """A finished row as the binaries leave it: result.json, flags.json and eval_table/."""
  run = runs / key
  (run / 'eval_table').mkdir(parents=True)
  (run / 'result.json').write_text(json.dumps(
      {'images_per_sec': images_per_sec, 'train_examples': 10000, 'epochs': 8}))
  (run / 'flags.json').write_text(json.dumps({'attack_steps': steps}))
  (run / 'eval_table' / 'eval.json').write_text(json.dumps(
      {'accuracy': accuracy, 'aa_examples': 500, 'masking_flags': []}))


def test_equal_time_rows_are_tabled_apart_against_agkd_bml(tmp_path):
  runs = tmp_path / 'runs'
  full = {'clean': 60.0, 'fgsm': 30.0, 'pgd20': 25.0, 'aa': 20.0}
  _fake_row(runs, 'agkd_bml', 40.0, 2, full)      # 250 s per epoch.
  _fake_row(runs, 'fs', 125.0, 1, full)           # 80 s.
  _fake_row(runs, 'fs_eqt', 50.0, 7, {'clean': 55.0, 'pgd20': 30.0, 'aa': 26.5})  # 200 s.
  # bench/equal_time.py's same-process ratio goes beside the runs' epoch-time ratio.
  (tmp_path / 'results').mkdir()
  (tmp_path / 'results' / 'equal_time_timing.json').write_text(json.dumps(
      {'date': '2026-12-02 06:00 UTC', 'rows': [{'row': 'fs_eqt', 'time_ratio': 0.934}]}))
  proc = _driver(tmp_path, '--rows=agkd_bml,fs,fs_eqt', '--stages=table', '--knn=false')
  assert proc.returncode == 0, proc.stdout + proc.stderr
  main = json.loads((tmp_path / 'results' / 'table.json').read_text())
  assert [r['row'] for r in main['rows']] == ['agkd_bml', 'fs']  # fs_eqt is not a main row.
  equal = json.loads((tmp_path / 'results' / 'table_equal_time.json').read_text())
  by_row = {r['row']: r for r in equal['rows']}
  assert list(by_row) == ['agkd_bml', 'fs', 'fs_eqt']
  assert by_row['fs_eqt']['attack_steps'] == 7 and by_row['fs']['attack_steps'] == 1
  assert by_row['fs_eqt']['sec_per_epoch'] == 200.0
  assert by_row['fs_eqt']['time_ratio'] == 0.8 and by_row['agkd_bml']['time_ratio'] == 1.0
  assert (by_row['fs_eqt']['pgd20'], by_row['fs_eqt']['aa']) == (30.0, 26.5)
  assert by_row['fs_eqt']['timed_ratio'] == 0.93 and by_row['fs']['timed_ratio'] is None
  md = (tmp_path / 'results' / 'table_equal_time.md').read_text()
  assert '| FS | 7 | 200.000 | 0.800 | 0.930 |' in md and '(2026-12-02 06:00 UTC)' in md

  # The readme stage rewrites only the marked block, from the table's JSON.
  readme = tmp_path / 'README.md'
  sys.path.insert(0, REPO)
  from bench import robustness_cpu  # pylint: disable=g-import-not-at-top
  readme.write_text(f'intro\n{robustness_cpu.README_BEGIN}\nstale\n{robustness_cpu.README_END}\n'
                    'outro\n')
  proc = _driver(tmp_path, '--rows=agkd_bml,fs,fs_eqt', '--stages=readme', f'--readme={readme}')
  assert proc.returncode == 0, proc.stdout + proc.stderr
  text = readme.read_text()
  assert text.startswith('intro\n') and text.endswith('outro\n') and 'stale' not in text
  assert '| FS | 60.00 | 30.00 | 25.00 | - | - | 20.00 (500) | 80.00 | none |' in text
  # The AGKD-BML row says it is not the official recipe, and quotes the recipe study's row.
  assert 'The AGKD-BML row is not the official recipe' in text
  assert text.split('\n\nThe AGKD-BML row')[1].split('\n')[0].endswith('(not evaluated yet).')
  (tmp_path / 'results' / 'recipe_study.json').write_text(json.dumps({'rows': [
      {'row': 'agkd_bml_k10', 'clean': 50.0, 'pgd20': 30.0, 'aa': 25.5, 'aa_n': 500},
      {'row': 'at10', 'clean': 48.0, 'pgd20': 29.0, 'aa': 24.0, 'aa_n': 500}]}))
  proc = _driver(tmp_path, '--rows=agkd_bml,fs,fs_eqt', '--stages=readme', f'--readme={readme}')
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert ('clean 50.00%, PGD-20 30.00%, AA 25.50% on 500 images, against AT-10 24.00% there.'
          in readme.read_text())
  readme.write_text('no markers\n')
  proc = _driver(tmp_path, '--stages=readme', f'--readme={readme}')
  assert proc.returncode != 0 and 'no <!-- robustness_cpu:begin' in proc.stderr


def test_table_keeps_rows_whose_runs_are_gone(tmp_path):
  runs = tmp_path / 'runs'
  full = {'clean': 60.0, 'fgsm': 30.0, 'pgd20': 25.0, 'aa': 20.0}
  _fake_row(runs, 'agkd_bml', 40.0, 2, full)
  _fake_row(runs, 'fs', 125.0, 1, {**full, 'pgd20': 9.0})
  _fake_row(runs, 'fs_eqt', 50.0, 7, {'clean': 55.0, 'pgd20': 30.0, 'aa': 26.5})
  args = ['--rows=agkd_bml,fs,fs_eqt,at', '--stages=table', '--knn=false']
  assert _driver(tmp_path, *args).returncode == 0
  first = json.loads((tmp_path / 'results' / 'table.json').read_text())

  # Scratch runs vanish between sessions: the figures stay, dated, instead of turning "missing";
  # a row never tabled (at) stays missing.
  shutil.rmtree(runs / 'fs')
  shutil.rmtree(runs / 'fs_eqt')
  proc = _driver(tmp_path, *args)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  second = json.loads((tmp_path / 'results' / 'table.json').read_text())
  assert second['missing'] == ['at']
  fs = {r['row']: r for r in second['rows']}['fs']
  assert fs['pgd20'] == 9.0 and fs['tabled'] == first['date']
  assert f'no longer on disk, with the figures of the last table made from their runs (its ' \
         f'date): FS ({first["date"]})' in second['notes']
  equal = {r['row']: r for r in json.loads(
      (tmp_path / 'results' / 'table_equal_time.json').read_text())['rows']}
  assert (equal['fs_eqt']['aa'], equal['fs_eqt']['sec_per_epoch']) == (26.5, 200.0)

  # A run directory that exists but is unfinished is a row in progress, not a lost one.
  (runs / 'fs').mkdir()
  third = _driver(tmp_path, *args)
  assert third.returncode == 0, third.stdout + third.stderr
  table = json.loads((tmp_path / 'results' / 'table.json').read_text())
  assert table['missing'] == ['fs', 'at']


def test_driver_trains_evaluates_resumes_and_tabulates(tmp_path, shared_cifar):
  del shared_cifar
  args = ['--rows=fs,agkd_only', '--train_flags=--train_examples=100,--max_steps=2,'
          '--batch_size=16,--eval_examples=20', '--attacks=clean,pgd20', '--num_examples=20',
          '--knn=false']
  first = _driver(tmp_path, *args)
  assert first.returncode == 0, first.stdout + first.stderr
  # AGKD-BML rows wait for their teacher, the UM row, instead of failing half-way.
  assert 'agkd_only: needs the UM row' in first.stdout
  fs_run = tmp_path / 'runs' / 'fs'
  assert (fs_run / 'result.json').is_file()
  assert (fs_run / 'eval_table' / 'settings.json').is_file()

  second = _driver(tmp_path, *args)
  assert second.returncode == 0, second.stdout + second.stderr
  assert 'fs: trained already' in second.stdout
  assert 'fs: evaluated already' in second.stdout

  table = json.loads((tmp_path / 'results' / 'table.json').read_text())
  assert table['missing'] == ['agkd_only']
  (row,) = table['rows']
  evaluation = json.loads((fs_run / 'eval_table' / 'eval.json').read_text())
  assert row['method'] == 'FS'
  assert row['clean'] == round(evaluation['accuracy']['clean'], 2)
  assert row['train_examples'] == 100
  md = (tmp_path / 'results' / 'table.md').read_text()
  assert '| FS |' in md and 'Not yet trained and evaluated: agkd_only' in md
  # The eps sweep of every evaluated row is drawn in one plot.
  assert row['eps_sweep'] == evaluation['eps_sweep']
  assert (tmp_path / 'results' / 'table_eps.png').stat().st_size > 1000


def test_driver_rejects_unknown_rows(tmp_path):
  proc = _driver(tmp_path, '--rows=nope', '--stages=table')
  assert proc.returncode != 0
  assert 'unknown rows' in proc.stderr


def test_equal_time_timing_parses_the_rows_flagfiles_and_times_them(tmp_path):
  sys.path.insert(0, REPO)
  # pylint: disable=g-import-not-at-top
  from bench import equal_time
  from bench import robustness_cpu
  # pylint: enable=g-import-not-at-top
  by_key = {r.key: r for r in robustness_cpu.ROWS}
  fs = equal_time.row_config(by_key['fs_eqt'])
  # The row's extra flags win over its flagfile; fractions parse as the binary parses them.
  assert fs['method'] == 'feature_scatter' and fs['attack_steps'] == 8
  assert abs(fs['step_size'] - 2 / 255) < 1e-12 and fs['label_smoothing'] == 0.5
  agkd = equal_time.row_config(by_key['agkd_bml'])
  assert agkd['agkd_mart'] is True and agkd['attention'] == 'channel_sum' and agkd['attack_steps'] == 2
  assert 'teacher_dir' not in agkd and 'epochs' not in agkd  # Run settings, not the step's.

  proc = subprocess.run(
      [sys.executable, os.path.join(REPO, 'bench', 'equal_time.py'),
       '--timing_rows=agkd_bml,bilateral_eqt', '--steps=1', '--rounds=2',
       '--dataset=synthetic:32'], cwd=REPO, capture_output=True, text=True, timeout=600,
      env=dict(os.environ, AGKD_BENCH_RESULTS=str(tmp_path)))
  assert proc.returncode == 0, proc.stdout + proc.stderr
  rows = json.loads((tmp_path / 'equal_time_timing.json').read_text())['rows']
  assert [r['row'] for r in rows] == ['agkd_bml', 'bilateral_eqt']
  assert rows[0]['time_ratio'] == 1.0 and rows[1]['method'] == 'Bilateral K=8'
  assert rows[1]['img_per_s'] > 0 and rows[1]['time_ratio_min'] <= rows[1]['time_ratio'] <= (
      rows[1]['time_ratio_max'])


def test_gpu_throughput_script_runs_tiny_on_the_cpu(tmp_path):
  script = os.path.join(REPO, 'bench', 'gpu_throughput.py')
  proc = subprocess.run(
      [sys.executable, script, '--model=cnn-cpu', '--batch_size=8', '--seconds=0.5',
       '--bank_examples=200', '--jit=false', '--precision=float32',
       f'--results_dir={tmp_path}'], cwd=REPO, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  result = json.loads((tmp_path / 'gpu.json').read_text())
  agkd, at = result['rows']
  assert agkd['method'] == 'AGKD-BML K=2' and at['method'] == 'AT-7'
  for row in (agkd, at):
    assert row['img_per_s'] > 0
    assert abs(row['epoch_s'] - 50000 / row['img_per_s']) < 1e-6 * row['epoch_s']
  # Without a GPU the script refuses to write the GPU result files.
  if not tf.config.list_logical_devices('GPU'):
    proc = subprocess.run([sys.executable, script, '--model=cnn-cpu'], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0 and 'no GPU here' in proc.stderr


def test_speed_collects_a_ratio_and_the_fraction_of_peak(tmp_path):
  env = dict(os.environ, AGKD_BENCH_RESULTS=str(tmp_path))
  proc = subprocess.run(
      [sys.executable, os.path.join(REPO, 'bench', 'speed.py'), '--parts=attack',
       '--attack_batch=8', '--rounds=1', '--matmul_size=1024'],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  result = json.loads((tmp_path / 'speed.json').read_text())
  pgd, peak = result['rows']
  assert pgd['measure'].startswith('PGD-20') and pgd['ratio'] > 0
  # A tiny workload's FLOP rate is small, but must be the product the docstring defines.
  assert pgd['units'] == 40 and pgd['peak_fraction'] > 0
  assert abs(pgd['gflops'] - pgd['ours'] * 40 * result['forward_flops'] / 1e9) < 1e-6 * (
      pgd['gflops'])
  assert abs(pgd['peak_fraction'] - pgd['gflops'] / result['peak_gflops']) < 1e-9
  assert peak['peak_fraction'] == 1.0 and peak['ours'] == result['peak_gflops'] > 0
  assert result['forward_flops'] > 1e6  # cnn-cpu is tens of MFLOPs per image.


def test_readme_block_replaces_only_its_block(tmp_path):
  sys.path.insert(0, REPO)
  from bench import common  # pylint: disable=g-import-not-at-top
  readme = tmp_path / 'README.md'
  readme.write_text('intro\n<!-- speed:begin (written by x.py) -->\nstale\n<!-- speed:end -->\n'
                    '<!-- other:begin -->\nkept\n<!-- other:end -->\n')
  common.readme_block('speed', ['| a |', '|---|'], str(readme))
  assert readme.read_text() == (
      'intro\n<!-- speed:begin (written by x.py) -->\n| a |\n|---|\n<!-- speed:end -->\n'
      '<!-- other:begin -->\nkept\n<!-- other:end -->\n')
  readme.write_text('no markers\n')
  try:
    common.readme_block('speed', ['x'], str(readme))
  except SystemExit as e:
    assert 'has no <!-- speed:begin' in str(e)
  else:
    raise AssertionError('a README without the block was accepted')
  assert readme.read_text() == 'no markers\n'


def test_import_agkd_tf_turns_onednn_on_unless_told_otherwise():
  code = 'import os, agkd_tf; print(os.environ.get("TF_ENABLE_ONEDNN_OPTS"))'
  env = {k: v for k, v in os.environ.items() if k != 'TF_ENABLE_ONEDNN_OPTS'}
  for setting, expected in ((None, '1'), ('0', '0')):
    if setting is not None:
      env['TF_ENABLE_ONEDNN_OPTS'] = setting
    out = subprocess.run([sys.executable, '-c', code], env=env, cwd=REPO, capture_output=True,
                         text=True, timeout=120, check=True).stdout
    assert out.strip() == expected, setting
  # After TensorFlow has loaded, the variable would do nothing: agkd_tf leaves it alone.
  code = 'import os, tensorflow, agkd_tf; print(os.environ.get("TF_ENABLE_ONEDNN_OPTS"))'
  env.pop('TF_ENABLE_ONEDNN_OPTS')
  out = subprocess.run([sys.executable, '-c', code], env=env, cwd=REPO, capture_output=True,
                       text=True, timeout=120, check=True).stdout
  assert out.strip().splitlines()[-1] == 'None'


def test_onednn_bench_times_both_settings_in_their_own_processes(tmp_path):
  proc = subprocess.run(
      [sys.executable, os.path.join(REPO, 'bench', 'onednn.py'), '--models=cnn-cpu',
       '--rounds=1', '--steps=cnn-cpu:1', '--workloads=pgd10'], cwd=REPO, capture_output=True,
      text=True, timeout=600, env=dict(os.environ, AGKD_BENCH_RESULTS=str(tmp_path)))
  assert proc.returncode == 0, proc.stderr[-2000:]
  result = json.loads((tmp_path / 'onednn.json').read_text())
  row, = result['rows']
  assert row['pgd10_on'] > 0 and row['pgd10_off'] > 0
  # One round: the median ratio is that round's (the img/s are rounded to 2 decimals).
  assert abs(row['pgd10_ratio'] - row['pgd10_on'] / row['pgd10_off']) < 0.01
  assert float(row['max_logit_diff']) < 1e-3  # The same maths, rounding apart.
  assert 'PGD-10 on / off' in (tmp_path / 'onednn.md').read_text()


def test_bf16_profile_splits_busy_time_into_convolutions_and_the_rest(tmp_path):
  proc = subprocess.run(
      [sys.executable, os.path.join(REPO, 'bench', 'bf16_profile.py'), '--models=cnn-cpu',
       '--batch_size=4', '--calls=1'], cwd=REPO, capture_output=True, text=True, timeout=600,
      env=dict(os.environ, AGKD_BENCH_RESULTS=str(tmp_path)))
  assert proc.returncode == 0, proc.stderr[-2000:]
  result = json.loads((tmp_path / 'bf16_profile.json').read_text())
  row, = result['rows']
  # The profile saw the network's convolutions in both kinds, and the casts bfloat16 adds.
  assert row['conv_ms_fp32'] > 0 and row['conv_ms_bf16'] > 0 and row['cast_ms_bf16'] > 0
  assert abs(row['busy_ms_fp32'] - row['conv_ms_fp32'] - row['rest_ms_fp32']) < 0.2
  detail = dict(result['detail']['cnn-cpu']['float32'])
  assert any('Conv2D' in op for op in detail) and 'IDLE' not in detail
  assert row['busy_share_fp32'] > 0 and row['wall_ms_fp32'] > 0


def test_the_readme_reading_of_the_cpu_table_is_the_one_its_files_give():
  """The prose under the CPU table is written from the results files, so it matches them."""
  sys.path.insert(0, REPO)
  # pylint: disable=g-import-not-at-top
  from bench import common
  from bench import robustness_notes
  # pylint: enable=g-import-not-at-top
  under, after = robustness_notes.from_files(os.path.join(REPO, 'bench', 'results'))
  readme = os.path.join(REPO, 'README.md')
  assert common.readme_block_text('robustness_notes', readme) == '\n\n'.join(under)
  assert common.readme_block_text('robustness_ablations', readme) == '\n\n'.join(after)
  # The figures come from the rows: change one and the text follows.
  rows = {'agkd_bml': {'row': 'agkd_bml', 'method': 'AGKD-BML', 'clean': 60.0, 'pgd20': 30.0,
                       'cw20': 26.0, 'aa': 25.0, 'aa_n': 500, 'attack_steps': 10, 'epochs': 12,
                       'masking': 'none'},
          'at': {'row': 'at', 'method': 'AT', 'clean': 50.0, 'pgd20': 27.0, 'cw20': 24.0,
                 'aa': 23.0, 'aa_n': 500, 'masking': 'none'},
          'trades': {'row': 'trades', 'method': 'TRADES', 'clean': 52.0, 'pgd20': 25.0,
                     'cw20': 22.0, 'aa': 21.0, 'aa_n': 500, 'masking': 'none'}}
  text = robustness_notes.agkd_standing(rows)
  assert 'is not the least robust' in text and '25.0 against AT\'s 23.0' in text
  assert 'It is flagged' not in text and 'is 10 targeted steps' in text
