r"""The CPU-scale robustness table: trains and evaluates every method on one budget.

Wang et al., ICCV 2021 (AGKD-BML), Table 1 layout with an AutoAttack column, at the scale of a
2-core CPU: cnn-cpu on the shared CIFAR-10 JPEG folder, the class-balanced 10,000-image training
subset, 8 epochs and the optimiser of flags/cifar10_agkd_bml_cpu.cfg for every defence
(flags/bench_cpu/*.cfg, flags/cifar10_at_cpu.cfg). The UM row is the natural model that is also
AGKD-BML's teacher (flags/cifar10_natural_cpu.cfg: all 50,000 images, 12 epochs).

Each row is one `python -m agkd_tf.train` and one `python -m agkd_tf.evaluate` subprocess, so the
driver is resumable: a row whose run holds result.json is not trained again, a killed training
resumes from its last checkpoint, and an evaluation whose eval.json was made with the same
settings is not repeated. Each row's training and evaluation fits in one background job of under
an hour, so the table can be built in chunks across sessions:

  python bench/robustness_cpu.py --rows=at,trades --stages=train,eval   # one chunk
  python bench/robustness_cpu.py --stages=table                        # the table, any time
  python bench/robustness_cpu.py --stages=plot,readme   # figure and README from the table's JSON

The table (bench/results/robustness_cpu.{md,json}) holds every row evaluated so far; rows not yet
evaluated are listed as missing under it rather than left out silently. Beside it go the figures:
PGD-20 accuracy against eps for every row (`_eps.png`), the t-SNE grids of UM, SML and AGKD-BML
(the paper's Figures 1-4, `_tsne_<row>.png`) and the attention maps of the teacher, the AGKD-BML
student and AT over the same test images (`_attention.png`).

The equal-time rows (`at_eqt`, `fs_eqt`, `bilateral_eqt`) repeat the supplementary's section 4:
AT, FS and Bilateral with as many attack steps as fit in AGKD-BML's epoch time, evaluated on
clean, PGD-20 and AA and tabled apart, beside AGKD-BML and their own-K rows
(bench/results/robustness_cpu_equal_time.{md,json}).
"""

import dataclasses
import json
import os
import subprocess
import sys
import time

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common  # pylint: disable=g-import-not-at-top,wrong-import-position
from bench import robustness_notes  # pylint: disable=g-import-not-at-top,wrong-import-position

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True)
class Row:
  key: str
  name: str
  flagfile: str
  extra: tuple = ()
  ablation: bool = False
  tsne: bool = False  # The paper's t-SNE figures are of UM, SML and AGKD-BML.
  # A row of the equal-time comparison: more attack steps so that its epoch takes as long as
  # AGKD-BML's; evaluated on clean, PGD-20 and AA only, and tabled apart.
  equal_time: bool = False


_AGKD = 'flags/cifar10_agkd_bml_cpu.cfg'
EQUAL_TIME_STEPS = {'at': 8, 'fs': 8, 'bilateral': 8}
EQUAL_TIME_ATTACKS = ['clean', 'pgd20', 'aa']
ROWS = (
    Row('um', 'UM', 'flags/cifar10_natural_cpu.cfg', tsne=True),
    Row('at', 'AT', 'flags/cifar10_at_cpu.cfg'),
    Row('alp', 'ALP', 'flags/bench_cpu/alp.cfg'),
    Row('trades', 'TRADES', 'flags/bench_cpu/trades.cfg'),
    Row('mart', 'MART', 'flags/bench_cpu/mart.cfg'),
    Row('sml', 'SML', 'flags/bench_cpu/sml.cfg', tsne=True),
    Row('bilateral', 'Bilateral', 'flags/bench_cpu/bilateral.cfg'),
    Row('fs', 'FS', 'flags/bench_cpu/feature_scatter.cfg'),
    Row('cat', 'CAT', 'flags/bench_cpu/cat.cfg'),
    Row('agkd_bml', 'AGKD-BML', _AGKD, tsne=True),
    # The paper's ablations (Table 3 and section 4.3), each changing one switch of AGKD-BML.
    Row('agkd_only', 'AGKD only', _AGKD, ('--metric=none',), ablation=True),
    Row('bml_only', 'BML only', _AGKD, ('--attention=none',), ablation=True),
    Row('agkd_sml', 'AGKD+SML', _AGKD, ('--metric=sml',), ablation=True),
    Row('att_gradcam_orig', 'AGKD-BML, Grad-CAM (true class)', _AGKD,
        ('--attention=gradcam_orig',), ablation=True),
    Row('att_gradcam_false', 'AGKD-BML, Grad-CAM (false class)', _AGKD,
        ('--attention=gradcam_false',), ablation=True),
    Row('att_cam_avg', 'AGKD-BML, CAM average', _AGKD, ('--attention=cam_avg',), ablation=True),
    # The supplementary's equal-time comparison (section 4): the one-step defences, and AT, get
    # as many attack steps as fit in AGKD-BML's epoch time. K comes from the per-step cost
    # measured on the rows above: (AT-5 168.6 s - Bilateral-1 77.8 s) / 4 = 22.7 s per step and
    # epoch against AGKD-BML's 237.5 s, so K = 8 for all three (about 233-240 s);
    # `equal_time_table` prints each row's epoch time against AGKD-BML's, so a stale K shows.
    Row('at_eqt', 'AT', 'flags/cifar10_at_cpu.cfg', (f'--attack_steps={EQUAL_TIME_STEPS["at"]}',),
        equal_time=True),
    Row('fs_eqt', 'FS', 'flags/bench_cpu/feature_scatter.cfg',
        (f'--attack_steps={EQUAL_TIME_STEPS["fs"]}', '--step_size=2/255'), equal_time=True),
    Row('bilateral_eqt', 'Bilateral', 'flags/bench_cpu/bilateral.cfg',
        (f'--attack_steps={EQUAL_TIME_STEPS["bilateral"]}',), equal_time=True),
)
_BY_KEY = {r.key: r for r in ROWS}
_TEACHER_ROWS = {'agkd_bml', 'agkd_only', 'bml_only', 'agkd_sml', 'att_gradcam_orig',
                 'att_gradcam_false', 'att_cam_avg'}

flags.DEFINE_list('rows', [r.key for r in ROWS], 'Rows to work on: ' +
                  ', '.join(r.key for r in ROWS) + '. The table stage tables the equal-time rows '
                  '(*_eqt) apart, beside AGKD-BML and the one-step rows they stretch.')
flags.DEFINE_list('stages', ['train', 'eval', 'table'], 'train, eval, table, plot and/or '
                  'readme. plot redraws <name>_eps.png from the table\'s JSON (no run '
                  'directories needed); readme rewrites the README block between the '
                  'robustness_cpu markers from the table\'s JSON.')
flags.DEFINE_string('readme', os.path.join(ROOT, 'README.md'), 'The README the readme stage edits.')
flags.DEFINE_string('runs_dir', 'runs/robustness_cpu', 'One run directory per row under here.')
flags.DEFINE_list('attacks', ['clean', 'fgsm', 'bim10', 'pgd10', 'pgd20', 'cw10', 'cw20', 'mim40',
                              'aa'], 'Attacks of the evaluation.')
flags.DEFINE_integer('num_examples', 500, 'Class-balanced test images per evaluation.')
flags.DEFINE_integer('aa_examples', 500, 'AutoAttack images for the main rows.')
flags.DEFINE_integer('aa_examples_ablation', 200, 'AutoAttack images for the ablation rows.')
flags.DEFINE_bool('knn', True, 'k-NN / softmax accuracy (Table 6) in each evaluation.')
flags.DEFINE_string('name', 'robustness_cpu', 'Result file name under --results_dir.')
flags.DEFINE_string('results_dir', common.RESULTS, 'Where the table goes.')
flags.DEFINE_list('train_flags', [], 'More flags for every training, e.g. --max_steps=2.')
flags.DEFINE_list('eval_flags', [], 'More flags for every evaluation.')
FLAGS = flags.FLAGS


def _run_dir(row):
  return os.path.join(FLAGS.runs_dir, row.key)


def _attacks(row):
  if row.equal_time:
    return [a for a in EQUAL_TIME_ATTACKS if a in FLAGS.attacks]
  return list(FLAGS.attacks)


def _eval_settings(row):
  settings = {'attacks': _attacks(row), 'num_examples': FLAGS.num_examples,
              'aa_examples': FLAGS.aa_examples_ablation if row.ablation else FLAGS.aa_examples,
              'knn': FLAGS.knn and not row.equal_time, 'eval_flags': list(FLAGS.eval_flags)}
  if row.tsne:
    settings['tsne'] = True
  return settings


def _call(cmd, log_path):
  """Runs one binary with its output in log_path; returns (exit code, seconds)."""
  print(f'$ {" ".join(cmd)}  (log: {log_path})', flush=True)
  start = time.time()
  with open(log_path, 'a') as log:
    log.write(f'\n$ {" ".join(cmd)}\n')
    log.flush()
    code = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
  return code, time.time() - start


def train(row):
  run = _run_dir(row)
  if os.path.isfile(os.path.join(run, 'result.json')):
    print(f'{row.key}: trained already ({run})')
    return True
  os.makedirs(run, exist_ok=True)
  cmd = [sys.executable, '-m', 'agkd_tf.train', f'--flagfile={row.flagfile}',
         f'--model_dir={run}', '--verbose=2', *row.extra, *FLAGS.train_flags]
  if row.key in _TEACHER_ROWS:
    teacher = _run_dir(_BY_KEY['um'])
    if not os.path.isfile(os.path.join(teacher, 'result.json')):
      print(f'{row.key}: needs the UM row (its teacher) trained first; skipped')
      return False
    cmd.append(f'--teacher_dir={teacher}')
  code, seconds = _call(cmd, os.path.join(run, 'train.log'))
  print(f'{row.key}: training exit {code} after {seconds:.0f} s')
  return code == 0


def evaluate(row):
  run = _run_dir(row)
  out = os.path.join(run, 'eval_table')
  settings = _eval_settings(row)
  if common.evaluated_with(out, settings):
    print(f'{row.key}: evaluated already ({out})')
    return True
  if not os.path.isfile(os.path.join(run, 'result.json')):
    print(f'{row.key}: not trained yet; evaluation skipped')
    return False
  os.makedirs(out, exist_ok=True)
  cmd = [sys.executable, '-m', 'agkd_tf.evaluate', f'--model_dir={run}', f'--output_dir={out}',
         f'--attacks={",".join(settings["attacks"])}', f'--num_examples={FLAGS.num_examples}',
         f'--aa_examples={settings["aa_examples"]}', f'--knn={str(settings["knn"]).lower()}',
         f'--tsne={str(row.tsne).lower()}',
         '--verbose=0', *FLAGS.eval_flags]
  code, seconds = _call(cmd, os.path.join(out, 'evaluate.log'))
  print(f'{row.key}: evaluation exit {code} after {seconds:.0f} s')
  if code == 0:
    common.mark_evaluated(out, settings)
  return code == 0


def table_row(row):
  """The row's figures, or None when it has not been trained and evaluated."""
  run = _run_dir(row)
  try:
    with open(os.path.join(run, 'result.json')) as f:
      result = json.load(f)
    with open(os.path.join(run, 'eval_table', 'eval.json')) as f:
      ev = json.load(f)
  except OSError:
    return None
  acc = ev['accuracy']
  out = {'method': row.name, 'row': row.key}
  for key in _attacks(row):
    out[key] = common.pct(acc.get(key))
  out['aa_n'] = ev.get('aa_examples') if 'aa' in _attacks(row) else None
  try:
    with open(os.path.join(run, 'flags.json')) as f:
      out['attack_steps'] = json.load(f).get('attack_steps')
  except OSError:
    out['attack_steps'] = None
  knn = ev.get('knn') or {}
  for k in ('clean', 'pgd20'):
    pair = knn.get(k) or {}
    out[f'knn_{k}'] = (f'{pair["knn"]:.2f} / {pair["softmax"]:.2f}'
                       if 'knn' in pair and 'softmax' in pair else None)
  ips = result.get('images_per_sec')
  out['train_examples'] = result.get('train_examples')
  out['epochs'] = result.get('epochs')
  out['sec_per_epoch'] = (round(result['train_examples'] / ips, 1)
                          if ips and result.get('train_examples') else None)
  # Recomputed with the evaluator's current rules, so that rows evaluated at different times are
  # judged alike; a check whose measurement an older eval.json lacks is skipped for that row.
  from agkd_tf.evaluation import masking  # pylint: disable=g-import-not-at-top
  out['masking'] = '; '.join(masking.masking_flags(acc, ev)) or 'none'
  out['pgd20_large_eps'] = common.pct(ev.get('pgd20_large_eps'))
  out['eps_sweep'] = ev.get('eps_sweep')
  return out


def _figures():
  """Copies the t-SNE grids and draws the attention maps; returns a sentence naming them."""
  import shutil  # pylint: disable=g-import-not-at-top
  made = []
  for row in ROWS:
    grid = os.path.join(_run_dir(row), 'eval_table', 'tsne_grid.png')
    if row.tsne and row.key in FLAGS.rows and os.path.isfile(grid):
      made.append(f'{FLAGS.name}_tsne_{row.key}.png')
      shutil.copyfile(grid, os.path.join(FLAGS.results_dir, made[-1]))
  runs = {name: _run_dir(_BY_KEY[key]) for key, name in
          (('um', 'teacher (UM)'), ('agkd_bml', 'AGKD-BML student'), ('at', 'AT'))}
  if all(os.path.isfile(os.path.join(r, 'result.json')) for r in runs.values()):
    # pylint: disable=g-import-not-at-top
    from agkd_tf.evaluation import analysis
    from agkd_tf import data
    from agkd_tf import run_dir
    # pylint: enable=g-import-not-at-top
    networks, spec = {}, None
    for name, run in runs.items():
      networks[name], spec = run_dir.load_network(run)
    dataset = spec['dataset']
    if dataset.startswith('folder:') and not os.path.isabs(dataset[7:]):
      dataset = 'folder:' + os.path.join(ROOT, dataset[7:])  # Flagfile paths are repo-relative.
    splits = data.load(dataset, train_examples=1, test_examples=60)
    # The first test image of each of six classes.
    labels = [int(c) for c in splits.y_test]
    picks = [labels.index(c) for c in range(6) if c in labels]
    made.append(f'{FLAGS.name}_attention.png')
    analysis.attention_figure(networks, splits.x_test[picks],
                              os.path.join(FLAGS.results_dir, made[-1]))
  # Figures drawn by an earlier table from runs that are gone stay valid and stay listed.
  for name in [f'{FLAGS.name}_tsne_{r.key}.png' for r in ROWS if r.tsne] + [
      f'{FLAGS.name}_attention.png']:
    if name not in made and os.path.isfile(os.path.join(FLAGS.results_dir, name)):
      made.append(name)
  return (' Figures: ' + ', '.join(made) + '.') if made else ''


def equal_time_table(figures):
  """The equal-time comparison: AGKD-BML beside AT, FS and Bilateral at their own K and at the
  K that matches AGKD-BML's epoch time. `figures` maps row keys to `table_row` results."""
  order = ('agkd_bml', 'at', 'at_eqt', 'fs', 'fs_eqt', 'bilateral', 'bilateral_eqt')
  keys = [k for k in order if k in figures]
  if not any(_BY_KEY[k].equal_time for k in keys):
    return
  ref = (figures.get('agkd_bml') or {}).get('sec_per_epoch')
  # The rows' epoch times come from runs of different sessions, maybe on different machines;
  # bench/equal_time.py times the recipes in one process, and is the ratio to trust.
  try:
    with open(os.path.join(FLAGS.results_dir, 'equal_time_timing.json')) as f:
      timing = json.load(f)
    timed = {r['row']: r['time_ratio'] for r in timing['rows']}
  except (OSError, ValueError, KeyError):
    timing, timed = None, {}
  rows = []
  for key in keys:
    f = figures[key]
    seconds = f.get('sec_per_epoch')
    rows.append({'method': f['method'], 'row': key, 'attack_steps': f.get('attack_steps'),
                 'sec_per_epoch': seconds,
                 'time_ratio': round(seconds / ref, 2) if seconds and ref else None,
                 'timed_ratio': round(timed[key], 2) if key in timed else None,
                 'clean': f.get('clean'), 'pgd20': f.get('pgd20'), 'aa': f.get('aa'),
                 'aa_n': f.get('aa_n'), 'masking': f.get('masking')})
  columns = [('method', 'method'), ('attack steps K', 'attack_steps'),
             ('train s/epoch', 'sec_per_epoch'), ('time / AGKD-BML', 'time_ratio'),
             ('time / AGKD-BML, same process', 'timed_ratio'),
             ('clean', 'clean'), ('PGD-20', 'pgd20'), ('AA', 'aa'), ('AA images', 'aa_n'),
             ('masking flags', 'masking')]
  notes = ('The supplementary\'s equal-time comparison (its section 4: FS with 2 steps and '
           'Bilateral with 4 matched AGKD-BML\'s 528 s epoch on a V100) at CPU scale: the same '
           'budget as the main table, with the attack steps K of AT, FS and Bilateral raised '
           'until an epoch takes about as long as AGKD-BML\'s (K=2 plus its teacher and metric '
           'passes). Accuracy (%) at eps = 8/255 on the main table\'s test images. Runs in ' +
           FLAGS.runs_dir + '. "time / AGKD-BML" divides the runs\' epoch times, which may come '
           'from different sessions and machines; "same process" is bench/equal_time.py\'s '
           'median ratio of time per training image, measured in one process' +
           (f' ({timing["date"]})' if timing else ' (not run yet)') + '.')
  common.write(f'{FLAGS.name}_equal_time', rows, columns, notes=notes)


def _previous_rows(name):
  """Rows of an earlier results_dir/<name>.json by row key, with the date they were tabled."""
  try:
    with open(os.path.join(FLAGS.results_dir, f'{name}.json')) as f:
      previous = json.load(f)
  except (OSError, ValueError):
    return {}
  return {r['row']: dict(r, tabled=r.get('tabled') or previous.get('date'))
          for r in previous.get('rows', []) if 'row' in r}


def table():
  rows, missing, figures, kept = [], [], {}, []
  # Run directories are scratch (a session's /tmp can vanish); a row whose run is gone keeps the
  # figures it had in the committed table instead of dropping out, and the notes say so.
  previous = {**_previous_rows(f'{FLAGS.name}_equal_time'), **_previous_rows(FLAGS.name)}
  for key in FLAGS.rows:
    figures[key] = table_row(_BY_KEY[key])
    if not figures[key] and key in previous and not os.path.isdir(_run_dir(_BY_KEY[key])):
      figures[key] = previous[key]
      kept.append(f'{previous[key]["method"]} ({previous[key]["tabled"]})')
    if not figures[key]:
      missing.append(key)
    elif not _BY_KEY[key].equal_time:  # Equal-time rows go to their own table only.
      rows.append(figures[key])
  columns = [('method', 'method')] + [(a.upper() if a != 'clean' else 'clean', a)
                                      for a in FLAGS.attacks]
  if 'aa' in FLAGS.attacks:
    columns.append(('AA images', 'aa_n'))
  if FLAGS.knn:
    columns += [('k-NN / softmax clean', 'knn_clean'), ('k-NN / softmax PGD-20', 'knn_pgd20')]
  columns += [('train images', 'train_examples'), ('epochs', 'epochs'),
              ('train s/epoch', 'sec_per_epoch'), ('masking flags', 'masking')]
  notes = (f'Accuracy (%) under L-inf eps = 8/255 on {FLAGS.num_examples} class-balanced shared '
           'CIFAR-10 JPEG test images (AutoAttack on the first "AA images" of them). Every '
           'defence trains cnn-cpu on the same class-balanced 10,000-image subset for 8 epochs '
           'with the optimiser of flags/cifar10_agkd_bml_cpu.cfg; UM is the natural teacher '
           '(50,000 images, 12 epochs). Runs in ' + FLAGS.runs_dir + '.')
  if missing:
    notes += ' Not yet trained and evaluated: ' + ', '.join(missing) + '.'
  if kept:
    notes += (' Rows whose run directory is no longer on disk, with the figures of the last '
              'table made from their runs (its date): ' + ', '.join(kept) + '.')
  notes += (' "train s/epoch" is each row\'s own run; rows trained in different sessions may '
            'have run on machines of different speed, so compare those seconds within one '
            'session, and time recipes against each other in one process (bench/equal_time.py, '
            'bench/agkd_throughput.py).')
  unchecked = [r['method'] for r in rows if r.get('pgd20_large_eps') is None]
  notes += (' Masking flags are recomputed from each eval.json with the current rules'
            + (f'; evaluated before the PGD-20-at-64/255 check existed: {", ".join(unchecked)}.'
               if unchecked else '.'))
  common.RESULTS = FLAGS.results_dir
  os.makedirs(FLAGS.results_dir, exist_ok=True)
  if eps_figure(rows, os.path.join(FLAGS.results_dir, f'{FLAGS.name}_eps.png')):
    notes += f' PGD-20 accuracy against eps for every row: {FLAGS.name}_eps.png.'
  notes += _figures()
  common.write(FLAGS.name, rows, columns, notes=notes, extra={'missing': missing})
  equal_time_table({k: v for k, v in figures.items() if v})


def eps_figure(rows, path):
  """Draws PGD-20 accuracy against eps, one line per table row that has an eps sweep.

  The evaluator's own plot (`evaluation.masking.eps_plot`), with every row in its own (colour,
  marker) and the ablations dashed.

  Args:
    rows: table rows (`table_row` results or the rows of the table's JSON).
    path: the PNG to write.

  Returns:
    [(label, colour, marker, linestyle)] of the lines drawn, as matplotlib holds them (empty, and
    no file written, when no row has an eps sweep).
  """
  from agkd_tf.evaluation import masking  # pylint: disable=g-import-not-at-top
  rows = [r for r in rows if r.get('eps_sweep')]
  if not rows:
    return []
  curves = {r['method']: r['eps_sweep'] for r in rows}
  dashed = {r['method'] for r in rows if r.get('row') in _BY_KEY and _BY_KEY[r['row']].ablation}
  return masking.eps_plot(curves, path, 'PGD-20 accuracy vs eps, every method (dashed: '
                          'ablations)', dashed=dashed)


def plot():
  """Redraws <name>_eps.png from results_dir/<name>.json alone: no run directory is read."""
  with open(os.path.join(FLAGS.results_dir, f'{FLAGS.name}.json')) as f:
    rows = json.load(f)['rows']
  path = os.path.join(FLAGS.results_dir, f'{FLAGS.name}_eps.png')
  drawn = eps_figure(rows, path)
  print(f'{path}: {len(drawn)} rows drawn from {FLAGS.name}.json' if drawn else
        f'{FLAGS.name}.json has no eps sweep; {path} not written')


# The README block's markers (common.readme_block rewrites what lies between them).
README_BEGIN = '<!-- robustness_cpu:begin (written by bench/robustness_cpu.py --stages=readme) -->'
README_END = '<!-- robustness_cpu:end -->'


def _agkd_recipe_note(result):
  """Why the table's AGKD-BML row is not the official recipe, and where that recipe's row is."""
  row = next((r for r in result['rows'] if r['row'] == 'agkd_bml'), None)
  if row is None:
    return ''
  text = (f'The AGKD-BML row is not the official recipe: it trains with K = '
          f'{row.get("attack_steps")} attack steps (the official run has 10; K = 2 is the setting '
          'of the supplementary\'s timing table), from a teacher without label smoothing '
          f'(officially 0.5), for {row.get("epochs")} epochs. The official recipe at CPU scale is '
          'the recipe study\'s K = 10 row (below), trained with the comparators on one footing')
  try:
    with open(os.path.join(FLAGS.results_dir, 'recipe_study.json')) as f:
      study_json = json.load(f)
    study = {r['row']: r for r in study_json['rows']}
  except (OSError, ValueError, KeyError):
    study_json, study = {}, {}
  k10 = study.get('agkd_bml_k10')
  if k10 is None or k10.get('aa') is None:
    return text + ' (not evaluated yet).'
  text += (f': clean {k10["clean"]:.2f}%, PGD-20 {k10["pgd20"]:.2f}%, AA {k10["aa"]:.2f}% on '
           f'{k10["aa_n"]} images')
  others = [f'{name} {study[key]["aa"]:.2f}%' for key, name in (('at10', 'AT-10'),
                                                               ('trades10', 'TRADES-10'))
            if study.get(key, {}).get('aa') is not None]
  text += f', against {" and ".join(others)} there.' if others else '.'
  return text + _best_of_ours(study_json, study)


def _best_of_ours(study_json, study):
  """The study's configuration of ours replicated over seeds, as a pointer for users."""
  rep = study_json.get('seeds')
  if not rep:
    return ''
  seeds = [(study.get(p['row']), study.get(p['baseline'])) for p in rep['per_seed']]
  if any(a is None or b is None for a, b in seeds):
    return ''
  figures = '; '.join(f'seed {i}: AA {a["aa"]:.2f}% and clean {a["clean"]:.2f}% against '
                      f'{b["aa"]:.2f}% and {b["clean"]:.2f}%' for i, (a, b) in enumerate(seeds))
  return (f' The study\'s configuration of ours, `flags/bench_cpu/recipe/{rep["row"]}.cfg` '
          f'(not the paper\'s recipe), against TRADES-10 at about equal training time per image: '
          f'{figures} ({rep["aa"]:+.1f} AA points over the seeds, s.e. {rep["aa_se"]:.1f}'
          f'{" paired" if rep.get("aa_se_paired") else ""}).')


def _readme_notes():
  """Rewrites the README's blocks that read the table's files (bench/robustness_notes.py)."""
  try:
    under, after = robustness_notes.from_files(FLAGS.results_dir, FLAGS.name)
  except (OSError, KeyError) as e:
    # A partial table (a test's, or a study under way) has no reading yet.
    print(f'README notes not rewritten: {e!r} missing')
    return
  for name, paragraphs in (('robustness_notes', under), ('robustness_ablations', after)):
    lines = []
    for p in paragraphs:
      lines += [p, '']
    common.readme_block(name, lines[:-1], FLAGS.readme)


def readme():
  """Rewrites the README's results block from results_dir/<name>.json, so the two agree."""
  with open(os.path.join(FLAGS.results_dir, f'{FLAGS.name}.json')) as f:
    result = json.load(f)
  cell = common.cell
  lines = ['| method | clean | FGSM | PGD-20 | CW-20 | MIM-40 | AA (images) | train s/epoch | '
           'masking flags |', '|---|---|---|---|---|---|---|---|---|']
  for r in result['rows']:
    masking = common.short_masking(r['masking'])
    lines.append(f'| {r["method"]} | ' + ' | '.join(cell(r.get(k)) for k in (
        'clean', 'fgsm', 'pgd20', 'cw20', 'mim40')) + f' | {cell(r.get("aa"))} '
        f'({cell(r.get("aa_n"))}) | {cell(r.get("sec_per_epoch"))} | {masking} |')
  if result.get('missing'):
    lines += ['', 'Not yet trained and evaluated: ' + ', '.join(result['missing']) + '.']
  lines += ['', _agkd_recipe_note(result)]
  figures = [(f'{FLAGS.name}_eps.png', 'PGD-20 accuracy against eps, every row'),
             (f'{FLAGS.name}_attention.png', 'Attention maps: teacher, AGKD-BML student, AT')]
  figures += [(f'{FLAGS.name}_tsne_{k}.png', f't-SNE of clean and PGD-20 embeddings, '
               f'{_BY_KEY[k].name}') for k in ('um', 'sml', 'agkd_bml')]
  here = os.path.dirname(os.path.abspath(FLAGS.readme))
  for name, caption in figures:
    path = os.path.join(FLAGS.results_dir, name)
    if os.path.isfile(path):
      lines += ['', f'{caption}:', '', f'![{caption}]({os.path.relpath(path, here)})']
  common.readme_block('robustness_cpu', lines, FLAGS.readme)
  _readme_notes()
  print(f'{FLAGS.readme}: results block rewritten from {FLAGS.name}.json '
        f'({len(result["rows"])} rows)')


def main(argv):
  del argv
  unknown = [k for k in FLAGS.rows if k not in _BY_KEY]
  if unknown:
    raise app.UsageError(f'unknown rows {unknown}; valid: {", ".join(_BY_KEY)}')
  for key in FLAGS.rows:
    row = _BY_KEY[key]
    if 'train' in FLAGS.stages and not train(row):
      continue
    if 'eval' in FLAGS.stages:
      evaluate(row)
  if 'table' in FLAGS.stages:
    table()
  if 'plot' in FLAGS.stages:
    plot()
  if 'readme' in FLAGS.stages:
    readme()


if __name__ == '__main__':
  app.run(main)
