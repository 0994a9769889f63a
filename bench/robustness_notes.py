"""The README's reading of the CPU robustness table, written from its results files.

Wang et al., ICCV 2021 (AGKD-BML) and its supplementary report the figures quoted as the paper's;
AutoAttack's figures are from the list of evaluated defences in the README of fra31/auto-attack
(Croce and Hein, ICML 2020). Every figure of ours comes from bench/results/robustness_cpu.json,
robustness_cpu_equal_time.json and equal_time_timing.json, so the prose cannot drift from the
table: `python bench/robustness_cpu.py --stages=readme` rewrites it with the table.
"""

import math

# Reported robust accuracy -> AutoAttack, CIFAR-10 at eps 8/255, WRNs at full scale.
AA_LIST = (('Madry AT', 47.04, 44.29), ('TRADES', 56.43, 53.18),
           ('MART (with extra unlabeled data)', 65.04, 56.69), ('Feature Scattering', 60.6, 38.78),
           ('Bilateral', 58.6, 30.96))
PAPER_AA = (50.8, 51.6)  # AGKD-BML under AA, WRN-28-10 and WRN-34-10 (supplementary Table 2).
# Paper Table 3: PGD-20 accuracy of AGKD-BML with each attention map.
PAPER_ATTENTION = {'gradcam_true': 59.06, 'gradcam_false': 58.86, 'cam_avg': 66.55,
                   'channel_sum': 65.93}
# Supplementary section 4: one accuracy per model at equal training time.
PAPER_EQUAL_TIME = (('AGKD-BML', 71.02), ('FS-2', 70.51), ('Bilateral-4', 59.99))
ROBUST_PGD20 = 15.0  # Below this PGD-20 accuracy a row is not robust enough to show a gap.


def _f(value):
  return f'{value:.1f}'


def _se(p, n):
  """The standard error (points) of an accuracy of p% on n images."""
  return 100 * math.sqrt(p / 100 * (1 - p / 100) / n)


def _gap(row):
  return row['pgd20'] - row['aa']


def literature(rows):
  """How the masking flags compare with AutoAttack's own list."""
  listed = ', '.join(f'{name} {a} -> {b}' for name, a, b in AA_LIST)
  robust = [r for r in rows.values() if r['pgd20'] >= ROBUST_PGD20 and r['row'] in
            ('at', 'alp', 'trades', 'sml', 'mart', 'bilateral', 'cat')]
  clean = [r for r in robust if r['masking'] == 'none']
  flagged = [r for r in robust if r['masking'] != 'none']
  mart, fs, cat = rows['mart'], rows['fs'], rows['cat']
  mart_there = AA_LIST[2][1] - AA_LIST[2][2]
  text = (
      'How the flags compare with the literature. AutoAttack\'s own list of evaluated defences '
      '(the README of fra31/auto-attack, CIFAR-10, WRNs at full scale) gives, as reported robust '
      f'accuracy -> AA: {listed}. Among our rows robust at this budget (PGD-20 at least '
      f'{ROBUST_PGD20:g}%), {", ".join(r["method"] for r in clean)} are unflagged, with PGD-20 '
      f'to AA gaps of {_f(min(map(_gap, clean)))} to {_f(max(map(_gap, clean)))} points; '
      f'{", ".join(r["method"] for r in flagged)} are flagged. ')
  if mart['masking'] != 'none':
    text += (f'MART\'s gap ({_f(_gap(mart))} points here, {_f(mart_there)} there) is the weakness '
             'of cross-entropy PGD against its boosted loss, not unusable gradients: CW-20 '
             f'({_f(mart["cw20"])}%) and APGD-T find it. ')
  if fs['pgd20'] < ROBUST_PGD20:
    text += (f'FS does not become robust in {fs["epochs"]} CPU epochs (PGD-20 {_f(fs["pgd20"])}%), '
             'so its gap cannot show here. ')
  if cat['masking'] != 'none':
    text += (f'CAT is flagged ({_f(_gap(cat))} points; CW-20 {_f(cat["cw20"] - cat["aa"])} above '
             'AA). Its per-example eps grows by at most 0.005 an epoch, so after '
             f'{cat["epochs"]} epochs it is judged at 8/255, well outside its training radius, '
             'with Dirichlet label smoothing, the ingredient it shares with Bilateral.')
  return text.rstrip()


def agkd_standing(rows):
  """Where the table's AGKD-BML row stands, and why."""
  agkd, at, trades = rows['agkd_bml'], rows['at'], rows['trades']
  robust = [r for r in rows.values() if r['pgd20'] >= ROBUST_PGD20]
  most_clean = max(robust, key=lambda r: r['clean'])['row'] == 'agkd_bml'
  multi = [r for r in robust if r['row'] in ('at', 'alp', 'trades', 'mart', 'sml', 'cat',
                                             'agkd_bml')]
  least = min(multi, key=lambda r: r['aa'])['row'] == 'agkd_bml'
  knn, soft = agkd['knn_pgd20'].split(' / ') if agkd.get('knn_pgd20') else (None, None)
  text = (f'Where the table\'s AGKD-BML stands. At this budget it keeps '
          f'{"the most" if most_clean else "much"} clean accuracy of the robust rows '
          f'({_f(agkd["clean"])}) and is {"the least" if least else "not the least"} robust of '
          f'the multi-step rows under AA: {_f(agkd["aa"])} against AT\'s {_f(at["aa"])} and '
          f'TRADES\' {_f(trades["aa"])} ({agkd["aa_n"]} images each). Its training attack is '
          f'{agkd["attack_steps"]} targeted steps of 2/255 (the setting of the supplementary\'s '
          'Table 4 timing; the official run uses K = 10), and its student starts from the natural '
          f'teacher\'s weights, so {agkd["epochs"]} epochs leave it nearer the teacher. ')
  if agkd['masking'] != 'none':
    text += (f'It is flagged: PGD-20 {_f(agkd["pgd20"])} -> AA {_f(agkd["aa"])}, while CW-20 '
             f'({_f(agkd["cw20"])}) is within {_f(agkd["cw20"] - agkd["aa"])} points of AA, so a '
             'margin loss finds what cross-entropy PGD misses; its loss is label smoothing 0.5 '
             'plus MART\'s, and both flatten the cross-entropy gradient PGD follows. Report its '
             'CW-20 and AA, not PGD. ')
  text += (f'The paper\'s supplementary (Table 2) reports AA {PAPER_AA[0]}-{PAPER_AA[1]}% for '
           'AGKD-BML trained with K = 10 on WRN-28-10 and WRN-34-10, between Madry AT and TRADES '
           'in AutoAttack\'s list above; this row does not reproduce that ranking.')
  if knn:
    text += (f' The k-NN classifier on its embedding (the paper\'s Table 6) holds {knn}% on the '
             f'same PGD-20 examples against the softmax\'s {soft}%; those examples attack the '
             'softmax, so this is transfer, not a k-NN-aware attack.')
  return text


def ablations(rows):
  """The ablations and the attention variants (AA on fewer images)."""
  agkd = rows['agkd_bml']
  parts = {k: rows[k] for k in ('agkd_only', 'bml_only', 'agkd_sml', 'att_gradcam_orig',
                                'att_gradcam_false', 'att_cam_avg')}
  n = parts['agkd_only']['aa_n']
  se = _se(agkd['aa'], n)
  text = (f'Ablations and attention variants (AA on the first {n} images; the standard error '
          f'there is about {_f(se)} points). Each changes one switch of AGKD-BML. Without the '
          f'metric loss (AGKD only) AA is {_f(parts["agkd_only"]["aa"])}%, without attention '
          f'distillation (BML only) {_f(parts["bml_only"]["aa"])}%, with SML\'s metric in place '
          f'of BML {_f(parts["agkd_sml"]["aa"])}%; AGKD-BML with both has {_f(agkd["aa"])}% on '
          f'{agkd["aa_n"]} images. The paper\'s Table 3 puts the class-relevant Grad-CAM of the '
          f'true class ({PAPER_ATTENTION["gradcam_true"]}%) or of a false class '
          f'({PAPER_ATTENTION["gradcam_false"]}%) well below the class-irrelevant maps, the '
          f'average CAM of all classes ({PAPER_ATTENTION["cam_avg"]}%) and its channel sum '
          f'({PAPER_ATTENTION["channel_sum"]}%). Here, as PGD-20 and AA: the channel sum '
          f'{_f(agkd["pgd20"])}% and {_f(agkd["aa"])}%')
  for key, name in (('att_gradcam_orig', 'Grad-CAM of the true class'),
                    ('att_gradcam_false', 'Grad-CAM of a false class'),
                    ('att_cam_avg', 'the average CAM')):
    r = parts[key]
    text += (f'; {name} {_f(r["pgd20"])}% and {_f(r["aa"])}%' +
             (' (flagged)' if r['masking'] != 'none' else ''))
  best = max(parts.values(), key=lambda r: r['aa'])
  gain = best['aa'] - agkd['aa']
  text += (f'. The best of them under AA, {best["method"]}, holds {_f(gain)} points more than '
           f'AGKD-BML ({_f(gain / se)} standard errors of {n} images) and '
           f'{_f(agkd["clean"] - best["clean"])} points less clean accuracy. ')
  beats_at = [r['method'] for r in parts.values() if r['aa'] >= rows['at']['aa']]
  text += ('No ablation or variant reaches AT under AA.' if not beats_at else
           f'{", ".join(beats_at)} reach AT under AA.')
  return text


def equal_time(rows, equal, timing, timing_command='python bench/equal_time.py'):
  """The supplementary's equal-time comparison at CPU scale."""
  agkd = rows['agkd_bml']
  steps = {k: equal[f'{k}_eqt'] for k in ('at', 'fs', 'bilateral')}
  k = steps['at']['attack_steps']
  ratio = {r: timing[f'{r}_eqt'] for r in ('at', 'fs', 'bilateral')}
  se = _se(agkd['aa'], agkd['aa_n'])
  below = [f'{name}-{k}' for key, name in (('at', 'AT'), ('fs', 'FS'), ('bilateral', 'Bilateral'))
           if steps[key]['aa'] < agkd['aa']]
  text = (
      'Equal time (the supplementary\'s section 4; `bench/results/robustness_cpu_equal_time.md`). '
      f'Given K = {k} attack steps, AT, FS and Bilateral train for about AGKD-BML\'s time per '
      f'image: {ratio["at"]:.2f}x, {ratio["fs"]:.2f}x and {ratio["bilateral"]:.2f}x of it, '
      f'measured in one process by `{timing_command}` '
      '(`bench/results/equal_time_timing.md`). Under AA '
      f'({agkd["aa_n"]} images) AGKD-BML holds {_f(agkd["aa"])}% against AT-{k}\'s '
      f'{_f(steps["at"]["aa"])}%, FS-{k}\'s {_f(steps["fs"]["aa"])}% and Bilateral-{k}\'s '
      f'{_f(steps["bilateral"]["aa"])}%. The extra steps move FS from PGD-20 '
      f'{_f(rows["fs"]["pgd20"])} to {_f(steps["fs"]["pgd20"])} and AA {_f(rows["fs"]["aa"])} to '
      f'{_f(steps["fs"]["aa"])}, ' + (
          f'and leave AT\'s AA where it was ({_f(rows["at"]["aa"])})' if
          steps['at']['aa'] == rows['at']['aa'] else
          f'and AT from AA {_f(rows["at"]["aa"])} to {_f(steps["at"]["aa"])}') + '. ')
  bil = steps['bilateral']
  if bil['masking'] != 'none':
    text += (f'Bilateral-{k} stays flagged: AA is {_f(_gap(bil))} points below its PGD-20 '
             f'({_f(bil["pgd20"])}%), the masking AutoAttack\'s list reports for Bilateral at full '
             'scale. ')
  paper = ', '.join(f'{name} {acc}%' for name, acc in PAPER_EQUAL_TIME)
  text += (f'The supplementary gives one accuracy per model, without naming the attack: {paper}. '
           'Here under AA ' + (f'only {", ".join(below)} {"is" if len(below) == 1 else "are"} '
                               'below AGKD-BML' if below else 'every equal-time row is above '
                               'AGKD-BML') +
           f' (the standard error of {agkd["aa_n"]} images is about {_f(se)} points).')
  return text


def paragraphs(rows, equal, timing, timing_command='python bench/equal_time.py'):
  """(notes under the table, notes on ablations and equal time), each a list of paragraphs.

  Args:
    rows: {row key: row} of robustness_cpu.json.
    equal: {row key: row} of robustness_cpu_equal_time.json.
    timing: {row key: time per image / AGKD-BML} of equal_time_timing.json.
    timing_command: the command that wrote equal_time_timing.json.
  """
  return ([literature(rows), agkd_standing(rows)],
          [ablations(rows), equal_time(rows, equal, timing, timing_command)])


def from_files(results_dir, name='robustness_cpu'):
  """paragraphs(...) from the results files under results_dir."""
  import json  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top

  def load(file_name):
    with open(os.path.join(results_dir, file_name)) as f:
      return json.load(f)
  timing = load('equal_time_timing.json')
  return paragraphs({r['row']: r for r in load(f'{name}.json')['rows']},
                    {r['row']: r for r in load(f'{name}_equal_time.json')['rows']},
                    {r['row']: r['time_ratio'] for r in timing['rows']}, timing['command'])
