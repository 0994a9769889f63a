r"""The AGKD-BML recipe study at CPU scale: which ingredient of the official recipe buys what.

Wang et al., ICCV 2021 (AGKD-BML) train their student with K = 10 attack steps, from a natural
teacher trained with label smoothing 0.5, for 200 epochs (lr x0.1 at 100 and 150). The CPU table
(bench/robustness_cpu.py) ran AGKD-BML with K = 2, a teacher without smoothing and 8 cosine
epochs. This driver trains one row per ingredient, all on the same footing (cnn-cpu, the same
class-balanced 10,000 training images, 12 epochs, SGD 0.1 / 0.9 / 2e-4 with lr x0.1 at 50% and
75% of the epochs: flags/bench_cpu/recipe/*.cfg), evaluates every row on the same 500 test images
(clean, FGSM, PGD-20, CW-20 and AutoAttack), and tables them with each row's training cost:

  - AGKD-BML K = 10 from the label-smoothing-0.5 teacher (the official recipe, scaled down);
  - the K sweep (K = 5, K = 2) and the teacher's share (K = 10 from the teacher without smoothing);
  - AT-10 and TRADES-10 from scratch, and AT-10 from the teacher (the initialisation's share);
  - our variants of AGKD-BML K = 10 (flags whose defaults are the official recipe): the TRADES
    term in place of LSCE + MART (--agkd_loss=trades) and an untargeted forward attack
    (--agkd_attack=untargeted); and both together at K = 4, about TRADES-10's training time.

Each row is one `python -m agkd_tf.train` and one `python -m agkd_tf.evaluate` subprocess, so the
driver is resumable: a trained row (result.json) is not trained again, a killed training resumes
from its last checkpoint, and an evaluation whose eval.json was made with the same settings is not
repeated. `--max_minutes` ends a chunk cleanly before a time limit (the training resumes):

  python bench/recipe_study.py --stages=train,eval --max_minutes=55   # one chunk; repeat
  python bench/recipe_study.py --stages=table,readme                  # table and README block
  python bench/recipe_study.py --stages=export                        # SavedModels to publish

A study of this size outlives the machine it starts on (about 8 hours of CPU, in sessions whose
machines do not keep the run directories). `--stages=park` copies what each row needs to resume or to be
tabled, and nothing else, into the repository (bench/results/recipe_runs/<row>/: flags.json,
model_spec.json, result.json, train.log, the latest checkpoint and eval_study's JSON); the
TensorBoard summaries and the run's export stay behind. `--stages=unpark` puts a parked row back
into --runs_dir where the run there is missing or older, so the next machine goes on from the
parked step:

  python bench/recipe_study.py --stages=unpark && python bench/recipe_study.py --stages=train,eval
  python bench/recipe_study.py --stages=park    # before the machine goes; commit recipe_runs/

The table (bench/results/recipe_study.{md,json}) reads every figure from the runs' eval.json and
result.json; rows not yet evaluated are listed as missing under it. The export stage writes each
evaluated row's SavedModel under bench/results/models/recipe_<row>/, so anyone can re-evaluate it
with `python -m agkd_tf.evaluate --saved_model=...` without training.
"""

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common  # pylint: disable=g-import-not-at-top,wrong-import-position
from bench import recipe_reading  # pylint: disable=g-import-not-at-top,wrong-import-position

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CFG = 'flags/bench_cpu/recipe/'


@dataclasses.dataclass(frozen=True)
class Row:
  key: str
  name: str
  flagfile: str
  teacher: str = ''  # The row whose run is this one's --teacher_dir.
  init_from: str = ''  # The row whose run is this one's --init_from.
  is_teacher: bool = False  # A natural teacher: evaluated on clean and PGD-20 only.
  ours: bool = False  # A variant of ours, not the paper's recipe.
  extra: tuple = ()  # More training flags (bench/equal_time.py reads them with the flagfile).
  same_cost_as: str = ''  # A row with the same flags but --seed: its timing stands for this one.


ROWS = (
    Row('teacher_ls05', 'natural teacher, label smoothing 0.5', _CFG + 'teacher_ls05.cfg',
        is_teacher=True),
    Row('teacher_ls0', 'natural teacher, label smoothing 0', 'flags/cifar10_natural_cpu.cfg',
        is_teacher=True),
    Row('agkd_bml_k10', 'AGKD-BML K=10, LS-0.5 teacher (official recipe)',
        _CFG + 'agkd_bml_k10.cfg', teacher='teacher_ls05'),
    Row('at10', 'AT-10 from scratch', _CFG + 'at10.cfg'),
    Row('trades10', 'TRADES-10 from scratch', _CFG + 'trades10.cfg'),
    Row('agkd_bml_k2', 'AGKD-BML K=2, LS-0.5 teacher', _CFG + 'agkd_bml_k2.cfg',
        teacher='teacher_ls05'),
    Row('agkd_bml_k5', 'AGKD-BML K=5, LS-0.5 teacher', _CFG + 'agkd_bml_k5.cfg',
        teacher='teacher_ls05'),
    Row('agkd_bml_k10_teacher_ls0', 'AGKD-BML K=10, LS-0 teacher',
        _CFG + 'agkd_bml_k10_teacher_ls0.cfg', teacher='teacher_ls0'),
    Row('at10_init_teacher', 'AT-10 from the LS-0.5 teacher', _CFG + 'at10_init_teacher.cfg',
        init_from='teacher_ls05'),
    # Our variants (flags of agkd_bml whose defaults are the official recipe).
    Row('agkd_bml_k10_trades', 'AGKD-BML K=10, TRADES term for LSCE + MART',
        _CFG + 'agkd_bml_k10_trades.cfg', teacher='teacher_ls05', ours=True),
    Row('agkd_bml_k10_untargeted', 'AGKD-BML K=10, untargeted forward attack',
        _CFG + 'agkd_bml_k10_untargeted.cfg', teacher='teacher_ls05', ours=True),
    Row('agkd_bml_k4_trades_untargeted', 'AGKD-BML K=4, TRADES term, untargeted forward attack',
        _CFG + 'agkd_bml_k4_trades_untargeted.cfg', teacher='teacher_ls05', ours=True),
    # A second training seed (another subset draw, initialisation and attack starts) of the one
    # comparison whose margin was within noise on the first: same flags otherwise, so the same
    # cost per image (same_cost_as).
    Row('trades10_seed1', 'TRADES-10 from scratch, training seed 1',
        _CFG + 'trades10_seed1.cfg', same_cost_as='trades10'),
    Row('agkd_bml_k4_trades_untargeted_seed1',
        'AGKD-BML K=4, TRADES term, untargeted forward attack, training seed 1',
        _CFG + 'agkd_bml_k4_trades_untargeted_seed1.cfg', teacher='teacher_ls05', ours=True,
        same_cost_as='agkd_bml_k4_trades_untargeted'),
)
BY_KEY = {r.key: r for r in ROWS}
STAGES = ('unpark', 'train', 'eval', 'table', 'readme', 'export', 'park')
STUDENT_ATTACKS = ['clean', 'fgsm', 'pgd20', 'cw20', 'aa']
TEACHER_ATTACKS = ['clean', 'pgd20']

def define_flags():
  """The driver's flags; defined when it runs, so other scripts can import its rows."""
  flags.DEFINE_list('rows', [r.key for r in ROWS], 'Rows to work on, in this order: ' +
                    ', '.join(r.key for r in ROWS) + '.')
  flags.DEFINE_list('stages', ['train', 'eval', 'table'], 'unpark, train, eval, table, readme, '
                    'export and/or park, done in that order. readme rewrites the README block '
                    'between the recipe_study markers from the table\'s JSON; export writes the '
                    'SavedModels to publish; park and unpark move each row\'s resumable state '
                    'between --runs_dir and --park_dir.')
  flags.DEFINE_string('runs_dir', 'runs/recipe', 'One run directory per row under here.')
  flags.DEFINE_integer('num_examples', 500, 'Class-balanced test images of every evaluation, '
                       'AutoAttack included.')
  flags.DEFINE_float('max_minutes', 0, 'Stop starting new work, and stop a training (it resumes '
                     'from its checkpoint), after this many minutes; 0: no limit.')
  flags.DEFINE_string('name', 'recipe_study', 'Result file name under --results_dir.')
  flags.DEFINE_string('results_dir', common.RESULTS, 'Where the table goes.')
  flags.DEFINE_string('models_dir', os.path.join(common.RESULTS, 'models'),
                      'The export stage writes recipe_<row>/ under here.')
  flags.DEFINE_string('readme', os.path.join(ROOT, 'README.md'),
                      'The README the readme stage edits.')
  flags.DEFINE_string('park_dir', os.path.join(common.RESULTS, 'recipe_runs'),
                      'Where park writes, and unpark reads, each row\'s resumable state.')
  flags.DEFINE_list('train_flags', [], 'More flags for every training, e.g. --max_steps=2.')
  flags.DEFINE_list('eval_flags', [], 'More flags for every evaluation.')


FLAGS = flags.FLAGS

_START = [time.time()]  # When main() began: --max_minutes counts from there.


def run_dir(row):
  return os.path.join(FLAGS.runs_dir, row.key)


def _trained(row):
  return os.path.isfile(os.path.join(run_dir(row), 'result.json'))


def _minutes_left():
  if not FLAGS.max_minutes:
    return None
  return FLAGS.max_minutes - (time.time() - _START[0]) / 60


def _out_of_time():
  left = _minutes_left()
  return left is not None and left <= 0


def _call(cmd, log_path):
  """Runs one binary, its output appended to log_path; (exit code or None if stopped, seconds)."""
  print(f'$ {" ".join(cmd)}  (log: {log_path})', flush=True)
  left = _minutes_left()
  start = time.time()
  with open(log_path, 'a') as log:
    log.write(f'\n$ {" ".join(cmd)}\n')
    log.flush()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
      code = proc.wait(timeout=None if left is None else max(left, 0) * 60)
    except subprocess.TimeoutExpired:
      # SIGTERM: the training saves a checkpoint after its current step and exits (143); it
      # resumes from there on the next call. An unfinished evaluation writes no eval.json.
      proc.terminate()
      proc.wait()
      code = None
  return code, time.time() - start


def command_line(row):
  """The training command of a row: its flagfile, with the teacher and start from runs_dir."""
  cmd = [sys.executable, '-m', 'agkd_tf.train', f'--flagfile={row.flagfile}',
         f'--model_dir={run_dir(row)}', '--verbose=2']
  if row.teacher:
    cmd.append(f'--teacher_dir={run_dir(BY_KEY[row.teacher])}')
  if row.init_from:
    cmd.append(f'--init_from={run_dir(BY_KEY[row.init_from])}')
  return cmd + list(FLAGS.train_flags)


def train(row):
  if _trained(row):
    print(f'{row.key}: trained already ({run_dir(row)})')
    return True
  needs = [k for k in (row.teacher, row.init_from) if k and not _trained(BY_KEY[k])]
  if needs:
    print(f'{row.key}: needs {", ".join(needs)} trained first; skipped')
    return False
  if _out_of_time():
    return False
  os.makedirs(run_dir(row), exist_ok=True)
  code, seconds = _call(command_line(row), os.path.join(run_dir(row), 'train.log'))
  print(f'{row.key}: training ' + ('stopped at the time limit' if code is None else
                                   f'exit {code}') + f' after {seconds:.0f} s', flush=True)
  return code == 0


def eval_settings(row):
  return {'attacks': TEACHER_ATTACKS if row.is_teacher else STUDENT_ATTACKS,
          'num_examples': FLAGS.num_examples, 'eval_flags': list(FLAGS.eval_flags)}


def evaluate(row):
  out = os.path.join(run_dir(row), 'eval_study')
  settings = eval_settings(row)
  if common.evaluated_with(out, settings):
    print(f'{row.key}: evaluated already ({out})')
    return True
  if not _trained(row):
    print(f'{row.key}: not trained yet; evaluation skipped')
    return False
  if _out_of_time():
    return False
  os.makedirs(out, exist_ok=True)
  cmd = [sys.executable, '-m', 'agkd_tf.evaluate', f'--model_dir={run_dir(row)}',
         f'--output_dir={out}', f'--attacks={",".join(settings["attacks"])}',
         f'--num_examples={FLAGS.num_examples}', f'--aa_examples={FLAGS.num_examples}',
         '--knn=false', '--verbose=0', *FLAGS.eval_flags]
  code, seconds = _call(cmd, os.path.join(out, 'evaluate.log'))
  print(f'{row.key}: evaluation ' + ('stopped at the time limit' if code is None else
                                     f'exit {code}') + f' after {seconds:.0f} s', flush=True)
  if code == 0:
    common.mark_evaluated(out, settings)
  return code == 0


def table_row(row):
  """The row's figures from its run's files, or None when it is not trained and evaluated."""
  try:
    with open(os.path.join(run_dir(row), 'result.json')) as f:
      result = json.load(f)
    with open(os.path.join(run_dir(row), 'eval_study', 'eval.json')) as f:
      ev = json.load(f)
    with open(os.path.join(run_dir(row), 'flags.json')) as f:
      run_flags = json.load(f)
  except OSError:
    return None
  from agkd_tf.evaluation import masking  # pylint: disable=g-import-not-at-top
  acc = ev['accuracy']
  out = {'row': row.key, 'method': row.name + (' (ours)' if row.ours else ''),
         'attack_steps': None if row.is_teacher else run_flags.get('attack_steps'),
         'teacher': row.teacher or None, 'init_from': row.init_from or None,
         'aa_n': ev.get('aa_examples') if 'aa' in acc else None,
         'train_examples': result.get('train_examples'), 'epochs': result.get('epochs'),
         'masking': '; '.join(masking.masking_flags(acc, ev)) or 'none',
         # Each AA image's verdict, where the evaluation kept them: the paired standard error.
         'aa_verdicts': ev.get('correct_per_image', {}).get('aa')}
  for key in STUDENT_ATTACKS:
    out[key] = common.pct(acc.get(key))
  ips = result.get('images_per_sec')
  out['sec_per_epoch'] = (round(result['train_examples'] / ips, 1)
                          if ips and result.get('train_examples') else None)
  out['wall_seconds'] = result.get('wall_seconds')
  return out


def _timing():
  """{row: time per image / AGKD-BML K=10} from bench/equal_time.py --study=recipe, if run."""
  try:
    with open(os.path.join(FLAGS.results_dir, f'{FLAGS.name}_timing.json')) as f:
      timing = json.load(f)
    ratios = {r['row']: r['time_ratio'] for r in timing['rows']}
  except (OSError, ValueError, KeyError):
    return None, {}
  # A row that differs from a timed one by --seed only costs the same per image.
  ratios.update({r.key: ratios[r.same_cost_as] for r in ROWS
                 if r.same_cost_as and r.same_cost_as in ratios})
  return timing, ratios


def table():
  rows, missing, by_row = [], [], {}
  timing, ratios = _timing()
  for key in FLAGS.rows:
    figures = table_row(BY_KEY[key])
    if figures is None:
      missing.append(key)
      continue
    figures['time_ratio'] = common.pct(ratios.get(key))
    rows.append(figures)
    by_row[key] = figures
  columns = [('row', 'row'), ('method', 'method'), ('K', 'attack_steps'), ('clean', 'clean'),
             ('FGSM', 'fgsm'), ('PGD-20', 'pgd20'), ('CW-20', 'cw20'), ('AA', 'aa'),
             ('AA images', 'aa_n'), ('train s/epoch', 'sec_per_epoch'),
             ('time per image / AGKD-BML K=10, same process', 'time_ratio'),
             ('masking flags', 'masking')]
  notes = (f'Accuracy (%) under L-inf eps = 8/255 on {FLAGS.num_examples} class-balanced shared '
           'CIFAR-10 JPEG test images, AutoAttack (standard) on the same images. Every row '
           'trains cnn-cpu on the same class-balanced 10,000-image subset for 12 epochs, SGD lr '
           '0.1, momentum 0.9, weight decay 2e-4, lr x0.1 after epochs 6 and 9 '
           '(flags/bench_cpu/recipe/); the teachers are flags/cifar10_natural_cpu.cfg (all '
           '50,000 images, 12 cosine epochs) with label smoothing 0.5 or 0. '
           f'Runs in {FLAGS.runs_dir}. "train s/epoch" is each run\'s own, possibly on a shared '
           'machine; the same-process ratio is bench/equal_time.py --study=recipe' +
           (f' ({timing["date"]})' if timing else ' (not run yet)') + '.')
  notes += (' The rows train on TensorFlow\'s oneDNN kernels (TF_ENABLE_ONEDNN_OPTS=1, which '
            '`import agkd_tf` sets), teacher_ls05 from its epoch 6 on: that changes the seconds '
            'per epoch, not the maths.')
  if missing:
    notes += ' Not yet trained and evaluated: ' + ', '.join(missing) + '.'
  common.RESULTS = FLAGS.results_dir
  extra = {'missing': missing, 'diagnosis': diagnosis(by_row, _cpu_rows(), ratios),
           'goal': goal(by_row, ratios), 'seeds': seeds(by_row)}
  common.write(FLAGS.name, rows, columns, notes=notes, extra=extra)
  # The diagnosis goes under the table in the same Markdown file.
  with open(os.path.join(FLAGS.results_dir, f'{FLAGS.name}.md'), 'a') as f:
    f.write('\n## Diagnosis: AA points each ingredient accounts for\n\n' +
            '\n'.join(diagnosis_lines(extra)) + '\n')
    reading = recipe_reading.reading_lines(dict(extra, rows=rows))
    if reading:
      f.write('\n## Reading\n\n' + '\n'.join(reading) + '\n')


# The diagnosis: each ingredient's share is the difference between two rows that differ in it
# only. (label, row, baseline row). 'cpu:<row>' is a row of bench/results/robustness_cpu.json.
CONTRASTS = (
    ('attack steps, K = 10 against K = 2', 'agkd_bml_k10', 'agkd_bml_k2'),
    ('attack steps, K = 10 against K = 5', 'agkd_bml_k10', 'agkd_bml_k5'),
    ("the teacher's label smoothing, 0.5 against 0 (K = 10)", 'agkd_bml_k10',
     'agkd_bml_k10_teacher_ls0'),
    ('the initialisation, from the teacher against from scratch (AT-10)', 'at10_init_teacher',
     'at10'),
    ('the schedule, 12 step-decay epochs against the CPU table\'s 8 cosine ones (K = 2; the '
     'teachers also differ, 0.5 against 0 smoothing)', 'agkd_bml_k2', 'cpu:agkd_bml'),
    ('the whole official recipe (K = 10, LS-0.5 teacher, 12 step-decay epochs) against the CPU '
     'table\'s row (K = 2, LS-0 teacher, 8 cosine epochs)', 'agkd_bml_k10', 'cpu:agkd_bml'),
    ('AGKD-BML K = 10 against AT-10, equal epochs', 'agkd_bml_k10', 'at10'),
    ('AGKD-BML K = 10 against TRADES-10, equal epochs', 'agkd_bml_k10', 'trades10'),
    # Equal time: the rows whose cost per image is nearest (bench/equal_time.py --study=recipe).
    ('AGKD-BML K = 2 against AT-10, about equal time', 'agkd_bml_k2', 'at10'),
    ('AGKD-BML K = 5 against TRADES-10, about equal time', 'agkd_bml_k5', 'trades10'),
    ('ours: the TRADES term in place of LSCE + MART', 'agkd_bml_k10_trades', 'agkd_bml_k10'),
    ('ours: an untargeted forward attack', 'agkd_bml_k10_untargeted', 'agkd_bml_k10'),
    ('ours, both at K = 4 (about equal time) against TRADES-10', 'agkd_bml_k4_trades_untargeted',
     'trades10'),
    ('ours, both at K = 4, against TRADES-10, both on training seed 1',
     'agkd_bml_k4_trades_untargeted_seed1', 'trades10_seed1'),
)
# The comparison replicated on a second training seed: (row, baseline) per seed, seed 0 first.
REPLICATED = (('agkd_bml_k4_trades_untargeted', 'trades10'),
              ('agkd_bml_k4_trades_untargeted_seed1', 'trades10_seed1'))
# The aim of issue 17: an AGKD-BML of ours at least this many AA points above TRADES-10 at equal
# training time, losing at most this many points of clean accuracy against it.
GOAL_AA_POINTS, GOAL_CLEAN_LOSS, GOAL_REFERENCE = 2.0, 5.0, 'trades10'
# Two rows' times per image count as equal within this factor (the timing's own spread).
EQUAL_TIME_TOLERANCE = 1.1


def _paired_standard_error(d):
  """Standard error (points) of the mean of per-image differences d (fractions of one image)."""
  mean = sum(d) / len(d)
  return round(100 * ((sum(x * x for x in d) / len(d) - mean * mean) / len(d)) ** 0.5, 2)


def _standard_error(a, b):
  """The standard error (points) of the AA difference of two rows; (value, paired).

  Both rows are judged on the same images. Where both evaluations kept each image's verdict
  (eval.json's correct_per_image), the error is the paired one, of the per-image differences,
  which is smaller where the verdicts agree; otherwise each row counts as an independent
  binomial proportion, the conservative figure.
  """
  va, vb = a.get('aa_verdicts'), b.get('aa_verdicts')
  if va and vb and len(va) == len(vb):
    return _paired_standard_error([int(i) - int(j) for i, j in zip(va, vb)]), True

  def var(row):
    p = row['aa'] / 100
    return p * (1 - p) / row['aa_n']
  return round(100 * (var(a) + var(b)) ** 0.5, 2), False


def _difference(a, b, key):
  return None if a.get(key) is None or b.get(key) is None else round(a[key] - b[key], 2)


def diagnosis(by_row, cpu_rows, ratios=None):
  """Each contrast's AA, CW-20, PGD-20 and clean difference (points), or what it still needs.

  Args:
    by_row: {row key: table_row(...)} of the rows trained and evaluated so far.
    cpu_rows: {row key: row} of bench/results/robustness_cpu.json.
    ratios: {row key: time per image / AGKD-BML K=10}, for each contrast's time ratio.

  Returns:
    One dict per CONTRASTS entry; 'aa' is None and 'needs' lists the missing rows where a row is
    not tabled yet.
  """
  out = []
  for label, key, base in CONTRASTS:
    rows = []
    for k in (key, base):
      rows.append(cpu_rows.get(k[4:]) if k.startswith('cpu:') else by_row.get(k))
    item = {'ingredient': label, 'row': key, 'baseline': base,
            'needs': [k for k, r in zip((key, base), rows) if r is None or r.get('aa') is None]}
    ratios = ratios or {}
    # The row's training time per image over the baseline's, where both were timed together.
    item['time'] = (round(ratios[key] / ratios[base], 2) if ratios.get(key) and ratios.get(base)
                    else None)
    if not item['needs']:
      a, b = rows
      for col in ('aa', 'cw20', 'pgd20', 'clean'):
        item[col] = _difference(a, b, col)
      item['aa_se'], item['aa_se_paired'] = _standard_error(a, b)
      item['beyond_noise'] = abs(item['aa']) > 0 and abs(item['aa']) >= 2 * item['aa_se']
    else:
      item.update(aa=None, cw20=None, pgd20=None, clean=None, aa_se=None, aa_se_paired=None,
                  beyond_noise=None)
    out.append(item)
  return out


def seeds(by_row):
  """The replicated comparison over its training seeds, or None until every seed is tabled.

  Returns:
    {'row', 'baseline', 'per_seed': [{'row', 'baseline', 'aa', 'clean'}], 'aa', 'clean',
    'aa_se', 'aa_se_paired', 'spread', 'beyond_noise'}: the mean over seeds of the AA and
    clean differences; its standard error is taken over the test images, of each image's
    difference averaged over the seeds (paired where every row kept its verdicts), so it
    still counts the test images only; 'spread' is the largest minus the smallest seed's AA
    difference, the only view of the variance between seeds that two or three runs give.
  """
  pairs = [(by_row.get(a), by_row.get(b)) for a, b in REPLICATED]
  if any(a is None or b is None or a.get('aa') is None or b.get('aa') is None
         for a, b in pairs):
    return None
  per_seed = [{'row': ka, 'baseline': kb, 'aa': round(a['aa'] - b['aa'], 2),
               'clean': round(a['clean'] - b['clean'], 2)}
              for (ka, kb), (a, b) in zip(REPLICATED, pairs)]
  aa = round(sum(p['aa'] for p in per_seed) / len(per_seed), 2)
  verdicts = [(a.get('aa_verdicts'), b.get('aa_verdicts')) for a, b in pairs]
  n = len(verdicts[0][0] or '')
  if n and all(va and vb and len(va) == n and len(vb) == n for va, vb in verdicts):
    se = _paired_standard_error(
        [sum(int(va[i]) - int(vb[i]) for va, vb in verdicts) / len(verdicts) for i in range(n)])
    paired = True
  else:
    # Independent proportions: the mean of the seeds' differences, each of two proportions.
    var = sum((a['aa'] / 100) * (1 - a['aa'] / 100) / a['aa_n'] +
              (b['aa'] / 100) * (1 - b['aa'] / 100) / b['aa_n'] for a, b in pairs)
    se, paired = round(100 * var ** 0.5 / len(pairs), 2), False
  return {'row': REPLICATED[0][0], 'baseline': REPLICATED[0][1], 'per_seed': per_seed, 'aa': aa,
          'clean': round(sum(p['clean'] for p in per_seed) / len(per_seed), 2),
          'aa_se': se, 'aa_se_paired': paired,
          'spread': round(max(p['aa'] for p in per_seed) - min(p['aa'] for p in per_seed), 2),
          'beyond_noise': abs(aa) > 0 and abs(aa) >= 2 * se}


def _reference(row):
  """The TRADES-10 row a row is judged against: the one of its own training seed."""
  if row.same_cost_as:
    return GOAL_REFERENCE + row.key[len(row.same_cost_as):]
  return GOAL_REFERENCE


def goal(by_row, ratios):
  """Whether each AGKD-BML row meets the aim against TRADES-10 (None where a figure is missing).

  Args:
    by_row: {row key: table_row(...)}.
    ratios: {row key: time per image / AGKD-BML K=10} from bench/equal_time.py --study=recipe.
  """
  out = []
  for row in ROWS:
    if row.key not in by_row or not row.key.startswith('agkd_bml'):
      continue
    r = by_row[row.key]
    ref_key = _reference(row)
    ref = by_row.get(ref_key)
    item = {'row': row.key, 'reference': ref_key, 'aa_above_trades': None, 'clean_loss': None,
            'time_vs_trades': None, 'met': None}
    if ref is not None and ref.get('aa') is not None and r.get('aa') is not None:
      item['aa_above_trades'] = round(r['aa'] - ref['aa'], 2)
      item['clean_loss'] = round(ref['clean'] - r['clean'], 2)
      if ratios.get(row.key) and ratios.get(ref_key):
        item['time_vs_trades'] = round(ratios[row.key] / ratios[ref_key], 2)
        # Equal time: no more than the tolerance over TRADES-10's cost per image (cheaper
        # counts, since it could spend the difference on more epochs).
        item['met'] = (item['aa_above_trades'] >= GOAL_AA_POINTS and
                       item['clean_loss'] <= GOAL_CLEAN_LOSS and
                       item['time_vs_trades'] <= EQUAL_TIME_TOLERANCE)
    out.append(item)
  return out


def _cpu_rows():
  try:
    with open(os.path.join(FLAGS.results_dir, 'robustness_cpu.json')) as f:
      return {r['row']: r for r in json.load(f)['rows']}
  except (OSError, ValueError, KeyError):
    return {}


def diagnosis_lines(result):
  """Markdown of the diagnosis and the goal check in a table()'s JSON."""
  cell = common.cell
  lines = ['| ingredient (row - baseline) | AA | s.e. | CW-20 | PGD-20 | clean | time / baseline |',
           '|---|---|---|---|---|---|---|']
  for d in result.get('diagnosis', []):
    what = f'{d["ingredient"]} (`{d["row"]}` - `{d["baseline"]}`)'
    if d['needs']:
      lines.append(f'| {what} | needs {", ".join(d["needs"])} | | | | | {cell(d["time"])} |')
      continue
    aa = f'{d["aa"]:+.2f}' + ('' if d['beyond_noise'] else ' (within 2 s.e.)')
    se = cell(d['aa_se']) + (' (paired)' if d.get('aa_se_paired') else '')
    lines.append(f'| {what} | {aa} | {se} | ' + ' | '.join(
        '-' if d[k] is None else f'{d[k]:+.2f}' for k in ('cw20', 'pgd20', 'clean')) +
        f' | {cell(d["time"])} |')
  lines += ['', f'Aim: AA at least {GOAL_AA_POINTS:g} points above TRADES-10 at equal training '
            f'time (time per image at most {EQUAL_TIME_TOLERANCE:g}x TRADES-10\'s), losing at '
            f'most {GOAL_CLEAN_LOSS:g} points of clean accuracy against it.', '',
            '| row | AA - TRADES-10 | clean loss vs TRADES-10 | time per image / TRADES-10 | '
            'aim met |', '|---|---|---|---|---|']
  # Rows of a second training seed are judged against TRADES-10 of the same seed.
  if not result.get('goal'):
    lines.append('| no AGKD-BML row evaluated yet | | | | |')
  for g in result.get('goal', []):
    met = {None: 'not measured yet', True: 'yes', False: 'no'}[g['met']]
    ref = g.get('reference', GOAL_REFERENCE)
    against = '' if ref == GOAL_REFERENCE else f' (against `{ref}`)'
    lines.append(f'| `{g["row"]}`{against} | ' + ' | '.join(
        cell(g[k]) for k in ('aa_above_trades', 'clean_loss', 'time_vs_trades')) + f' | {met} |')
  return lines


README_BEGIN = '<!-- recipe_study:begin (written by bench/recipe_study.py --stages=readme) -->'


def readme():
  """Rewrites the README's recipe_study block from results_dir/<name>.json."""
  with open(os.path.join(FLAGS.results_dir, f'{FLAGS.name}.json')) as f:
    result = json.load(f)
  cell = common.cell
  lines = ['| row | K | clean | PGD-20 | CW-20 | AA (images) | train s/epoch | '
           'time / AGKD-BML K=10 | masking flags |', '|---|---|---|---|---|---|---|---|---|']
  for r in result['rows']:
    masking = common.short_masking(r['masking'])
    lines.append(f'| {r["method"]} | {cell(r.get("attack_steps"))} | ' + ' | '.join(
        cell(r.get(k)) for k in ('clean', 'pgd20', 'cw20')) +
        f' | {cell(r.get("aa"))} ({cell(r.get("aa_n"))}) | {cell(r.get("sec_per_epoch"))} | '
        f'{cell(r.get("time_ratio"))} | {masking} |')
  if result.get('missing'):
    lines += ['', 'Not yet trained and evaluated: ' + ', '.join(
        f'`{k}`' for k in result['missing']) + '.']
  reading = recipe_reading.reading_lines(result)
  if reading:
    lines += [''] + reading
  lines += ['', 'What each ingredient accounts for (differences in points between two rows that '
            'differ in it only, on the same 500 images; s.e.: the standard error of the AA '
            'difference, paired over the images where both evaluations kept each image\'s '
            'verdict, else of two independent proportions):', ''] + diagnosis_lines(result)
  lines += ['', f'Written from bench/results/{FLAGS.name}.json ({result["date"]}), tabled by '
            f'`{result["command"]}` after `python bench/recipe_study.py --stages=train,eval` '
            'trained and evaluated the rows.']
  common.readme_block('recipe_study', lines, FLAGS.readme)
  print(f'{FLAGS.readme}: recipe_study block rewritten ({len(result["rows"])} rows)')


def export(row):
  """Exports an evaluated row's SavedModel to models_dir/recipe_<row>/ (replacing an old one)."""
  if table_row(row) is None:
    print(f'{row.key}: not trained and evaluated yet; not exported')
    return False
  dest = os.path.join(FLAGS.models_dir, f'recipe_{row.key}')
  # The run's result.json, copied beside the SavedModel: a row published from this training
  # already is not exported again (that would only rewrite the same weights as new bytes).
  source = os.path.join(run_dir(row), 'result.json')
  marker = os.path.join(dest, 'published_from.json')
  if os.path.isfile(os.path.join(dest, 'saved_model.pb')) and os.path.isfile(marker):
    with open(source) as a, open(marker) as b:
      if a.read() == b.read():
        print(f'{row.key}: exported already ({dest})')
        return True
  tmp = dest + '.tmp'
  shutil.rmtree(tmp, ignore_errors=True)
  exported = os.path.join(run_dir(row), 'export')
  if os.path.isfile(os.path.join(exported, 'saved_model.pb')):
    # The SavedModel the training wrote at its end, from the final weights it evaluated.
    shutil.copytree(exported, tmp)
  else:
    code, _ = _call([sys.executable, '-m', 'agkd_tf.export', f'--model_dir={run_dir(row)}',
                     f'--export_dir={tmp}'], os.path.join(run_dir(row), 'export.log'))
    if code != 0:
      shutil.rmtree(tmp, ignore_errors=True)
      print(f'{row.key}: export failed (log: {run_dir(row)}/export.log)')
      return False
  shutil.copyfile(source, os.path.join(tmp, 'published_from.json'))
  shutil.rmtree(dest, ignore_errors=True)
  os.replace(tmp, dest)
  print(f'{row.key}: exported to {dest}')
  return True


_PARKED_FILES = ('flags.json', 'model_spec.json', 'result.json', 'train.log')
_PARKED_EVAL = ('eval.json', 'settings.json')  # settings.json last: it marks eval.json finished.


def _checkpoint_step(directory):
  """The step of the latest checkpoint under directory/checkpoints, or -1."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  latest = tf.train.latest_checkpoint(os.path.join(directory, 'checkpoints'))
  return int(latest.rsplit('-', 1)[1]) if latest else -1


def _copy_state(src, dest):
  """Copies a row's resumable state from run dir src to dest (a new directory, then renamed)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tmp = dest + '.tmp'
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(os.path.join(tmp, 'checkpoints'))
  for name in _PARKED_FILES:
    if os.path.isfile(os.path.join(src, name)):
      shutil.copy2(os.path.join(src, name), tmp)
  latest = tf.train.latest_checkpoint(os.path.join(src, 'checkpoints'))
  if latest:
    # Only the newest checkpoint, and a state file that names only it (relative, so the
    # directory can move).
    for path in tf.io.gfile.glob(latest + '.*'):
      shutil.copy2(path, os.path.join(tmp, 'checkpoints'))
    name = os.path.basename(latest)
    with open(os.path.join(tmp, 'checkpoints', 'checkpoint'), 'w') as f:
      f.write(f'model_checkpoint_path: "{name}"\nall_model_checkpoint_paths: "{name}"\n')
  if os.path.isfile(os.path.join(src, 'eval_study', 'settings.json')):
    os.makedirs(os.path.join(tmp, 'eval_study'))
    for name in _PARKED_EVAL:
      shutil.copy2(os.path.join(src, 'eval_study', name), os.path.join(tmp, 'eval_study'))
  old = dest + '.old'
  shutil.rmtree(old, ignore_errors=True)
  if os.path.exists(dest):
    os.replace(dest, old)
  os.replace(tmp, dest)
  shutil.rmtree(old, ignore_errors=True)


def _progress(directory):
  """How far a run directory got: (trained, evaluated, checkpoint step)."""
  return (os.path.isfile(os.path.join(directory, 'result.json')),
          os.path.isfile(os.path.join(directory, 'eval_study', 'settings.json')),
          _checkpoint_step(directory))


def _finished_eval(directory):
  """The bytes of directory's finished study evaluation (eval.json), or None."""
  if not os.path.isfile(os.path.join(directory, 'eval_study', 'settings.json')):
    return None
  with open(os.path.join(directory, 'eval_study', 'eval.json'), 'rb') as f:
    return f.read()


def _move_state(row, src, dest, verb, same_text, newer_eval_counts=False):
  """Copies a row's state from run-like directory src to dest when src got further.

  With newer_eval_counts (parking: the run is the authority), a finished evaluation in src that
  differs from dest's also counts as further, so a re-evaluation (new attacks, per-image
  verdicts) of an already parked run is not silently left behind.
  """
  if not os.path.isfile(os.path.join(src, 'flags.json')):
    return False
  if os.path.isdir(dest) and _progress(dest) >= _progress(src):
    src_eval = _finished_eval(src) if newer_eval_counts else None
    if src_eval is None or src_eval == _finished_eval(dest):
      print(f'{row.key}: {same_text}')
      return False
  _copy_state(src, dest)
  trained, evaluated, step = _progress(dest)
  print(f'{row.key}: {verb} {dest} (' + ('trained' if trained else f'checkpoint {step}') +
        (', evaluated' if evaluated else '') + ')')
  return True


def park(row):
  """Copies a row's resumable state from its run to park_dir/<row>/ when it got further."""
  dest = os.path.join(FLAGS.park_dir, row.key)
  return _move_state(row, run_dir(row), dest, 'parked in', f'parked already ({dest})',
                     newer_eval_counts=True)


def unpark(row):
  """Puts a parked row back into its run directory when the run there is missing or behind."""
  dest = run_dir(row)
  return _move_state(row, os.path.join(FLAGS.park_dir, row.key), dest, 'unparked into',
                     f'the run in {dest} is as far as the parked one; left as it is')


def main(argv):
  del argv
  _START[0] = time.time()
  unknown = [k for k in FLAGS.rows if k not in BY_KEY]
  if unknown:
    raise app.UsageError(f'unknown rows {unknown}; valid: {", ".join(BY_KEY)}')
  unknown = [s for s in FLAGS.stages if s not in STAGES]
  if unknown:
    raise app.UsageError(f'unknown stages {unknown}; valid: {", ".join(STAGES)}')
  if 'unpark' in FLAGS.stages:
    for key in FLAGS.rows:
      unpark(BY_KEY[key])
  for key in FLAGS.rows:
    row = BY_KEY[key]
    if 'train' in FLAGS.stages and not train(row) or 'eval' in FLAGS.stages and not evaluate(
        row):
      if _out_of_time():
        print(f'--max_minutes={FLAGS.max_minutes:g} reached; rerun to go on')
        break
  if 'table' in FLAGS.stages:
    table()
  if 'readme' in FLAGS.stages:
    readme()
  if 'export' in FLAGS.stages:
    for key in FLAGS.rows:
      export(BY_KEY[key])
  if 'park' in FLAGS.stages:
    for key in FLAGS.rows:
      park(BY_KEY[key])


if __name__ == '__main__':
  define_flags()
  app.run(main)
