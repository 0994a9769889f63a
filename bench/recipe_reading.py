"""The recipe study's reading in words, generated from its results file.

Wang et al., "AGKD-BML: Defense Against Adversarial Attack by Attention Guided Knowledge
Distillation and Bi-directional Metric Learning", ICCV 2021; AT (Madry et al., ICLR 2018) and
TRADES (Zhang et al., ICML 2019) are the comparators. `bench/recipe_study.py --stages=table` writes the rows and the ingredient contrasts
(`diagnosis`) to bench/results/recipe_study.json; this module turns them into the sentences under
the study's table, so every figure in them comes from that file and each verdict (below, above,
within noise) is decided by the same two-standard-error rule as the table's.
"""

# A difference counts only beyond this many standard errors (the diagnosis table's rule).
NOISE_SE = 2.0


def _contrast(result, row, baseline):
  for d in result.get('diagnosis', []):
    if d['row'] == row and d['baseline'] == baseline and not d['needs']:
      return d
  return None


def _rows(result):
  return {r['row']: r for r in result.get('rows', [])}


def _points(d, key='aa'):
  """'11.6 AA points below' / '2.2 AA points above (within noise)' for a contrast."""
  value = d[key]
  name = {'aa': 'AA', 'clean': 'clean', 'pgd20': 'PGD-20', 'cw20': 'CW-20'}[key]
  side = 'below' if value < 0 else 'above'
  text = f'{abs(value):.1f} {name} points {side}' if value else f'level in {name}'
  if key == 'aa':
    text += (f' ({_se(d)})' if d['beyond_noise'] else f' (within noise, {_se(d)})')
  return text


def _se(d):
  return f's.e. {d["aa_se"]:.1f}' + (' paired' if d.get('aa_se_paired') else '')


def _gap(row):
  """PGD-20 minus AA (points): how much the cross-entropy attack overstates robustness."""
  if row.get('pgd20') is None or row.get('aa') is None:
    return None
  return row['pgd20'] - row['aa']


def standing(result):
  """Where the official recipe stands against AT-10 and TRADES-10, and why, in sentences."""
  rows = _rows(result)
  out = []
  vs = [(name, _contrast(result, 'agkd_bml_k10', base))
        for name, base in (('AT-10', 'at10'), ('TRADES-10', 'trades10'))]
  vs = [(name, d) for name, d in vs if d is not None]
  if not vs:
    return out
  loses = all(d['aa'] < 0 and d['beyond_noise'] for _, d in vs)
  wins = all(d['aa'] > 0 and d['beyond_noise'] for _, d in vs)
  verdict = ('It loses to both' if loses else 'It beats both' if wins else
             'It is not separated from both')
  times = [f'{d["time"]:.2f}x' for _, d in vs if d.get('time')]
  out.append(f'**At equal epochs the official recipe (K = 10, label-smoothing-0.5 teacher) is ' +
             ' and '.join(f'{_points(d)} {name}' for name, d in vs) + f'. {verdict} under '
             'AutoAttack' + (f', at {" and ".join(times)} their training time per image'
                             if len(times) == len(vs) else '') + '.**')
  k10 = rows.get('agkd_bml_k10')
  # Every evaluated row's gap, the official recipe first, the comparators named as in the text.
  names = {'agkd_bml_k10': 'AGKD-BML K = 10', 'at10': 'AT-10', 'trades10': 'TRADES-10'}
  order = ['agkd_bml_k10'] + [k for k in rows if k != 'agkd_bml_k10']
  gaps = [(names.get(k, f'`{k}`'), _gap(rows[k])) for k in order]
  gaps = [(n, g) for n, g in gaps if g is not None]
  if k10 is None or len(gaps) < 2:
    return out
  equal_time = [(who, whom, _contrast(result, row, base)) for who, whom, row, base in
                (('K = 2', 'AT-10', 'agkd_bml_k2', 'at10'),
                 ('K = 5', 'TRADES-10', 'agkd_bml_k5', 'trades10'))]
  equal_time = [(who, whom, d) for who, whom, d in equal_time if d is not None]
  if equal_time:
    out.append('At about equal training time, AGKD-BML ' + '; '.join(
        f'{who} is {_points(d)} {whom}' +
        (f' at {d["time"]:.2f}x its time per image' if d.get('time') else '')
        for who, whom, d in equal_time) + '.')
  worse = all(gaps[0][1] > g for n, g in gaps[1:] if n in ('AT-10', 'TRADES-10'))
  out.append(('Its PGD-20 accuracy overstates its robustness more than the comparators\' do: '
              if worse else '') +
             'PGD-20 exceeds AA by ' + ', '.join(f'{g:.1f} points for {n}' for n, g in gaps) +
             '. The suspect is the loss: label smoothing (LSCE 0.5, with MART) is a known '
             'source of a flat, misleading cross-entropy surface, on which a gradient attack '
             'stalls and the margin-based attacks of AutoAttack do not.')
  trades = _contrast(result, 'agkd_bml_k10_trades', 'agkd_bml_k10')
  if trades is None:
    out.append('`agkd_bml_k10_trades` (the TRADES term in place of LSCE + MART, all else equal) '
               'tests that suspicion; it is not measured yet.')
  else:
    gap = _gap(rows['agkd_bml_k10_trades'])
    out.append(f'`agkd_bml_k10_trades` tests it (the TRADES term in place of LSCE + MART, all '
               f'else equal): its PGD-20 exceeds AA by {gap:.1f} points (official '
               f'{_gap(k10):.1f}), and it is {_points(trades)} the official recipe, '
               f'{_points(trades, "clean")}.')
    deficit = _contrast(result, 'agkd_bml_k10', 'trades10')
    if trades['beyond_noise'] and trades['aa'] > 0 and deficit is not None and deficit['aa'] < 0:
      if trades['aa'] >= -deficit['aa']:
        out.append(f'With the TRADES term the official recipe\'s {-deficit["aa"]:.1f}-point AA '
                   f'deficit to TRADES-10 is gone (it gains {trades["aa"]:.1f}): the loss '
                   'accounts for all of it.')
      else:
        out.append(f'The loss so accounts for {trades["aa"]:.1f} of the {-deficit["aa"]:.1f} AA '
                   'points by which the official recipe trails TRADES-10.')
  return out


def ingredients(result):
  """One sentence per ingredient contrast that is measured."""
  out = []
  named = (('Attack steps (K = 10 against K = 2)', 'agkd_bml_k10', 'agkd_bml_k2'),
           ('Attack steps (K = 10 against K = 5)', 'agkd_bml_k10', 'agkd_bml_k5'),
           ("The teacher's label smoothing (0.5 against 0, K = 10)", 'agkd_bml_k10',
            'agkd_bml_k10_teacher_ls0'),
           ('Starting from the teacher (AT-10 from the teacher against from scratch)',
            'at10_init_teacher', 'at10'),
           ("The schedule (12 step-decay epochs against the CPU table's 8 cosine ones, K = 2)",
            'agkd_bml_k2', 'cpu:agkd_bml'))
  for label, row, base in named:
    d = _contrast(result, row, base)
    if d is None:
      continue
    clean = f'; clean {d["clean"]:+.1f}' if d.get('clean') is not None else ''
    out.append(f'- {label}: {d["aa"]:+.1f} AA points ('
               f'{"beyond" if d["beyond_noise"] else "within"} noise, {_se(d)})'
               f'{clean}.')
  return out


def variants(result):
  """Our variants against the aim, every one tried, met or not."""
  goal = [g for g in result.get('goal', []) if g.get('aa_above_trades') is not None]
  ours = {r['row'] for r in result.get('rows', []) if r.get('method', '').endswith('(ours)')}
  tried = [g for g in goal if g['row'] in ours]
  if not tried:
    return []
  met = [g['row'] for g in tried if g['met']]

  refs = {g['row']: g.get('reference', 'trades10') for g in tried}

  def noise(row):
    d = _contrast(result, row, refs[row])
    if d is None:
      return ''
    return f' ({_se(d)}{"" if d["beyond_noise"] else ", within noise"})'

  def against(row):
    return 'TRADES-10' if refs[row] == 'trades10' else f'`{refs[row]}`'

  out = ['Our variants against the aim (every one tried): ' + '; '.join(
      f'`{g["row"]}` {g["aa_above_trades"]:+.1f} AA{noise(g["row"])} and '
      f'{-g["clean_loss"]:+.1f} clean against {against(g["row"])}' +
      (f' at {g["time_vs_trades"]:.2f}x its time' if g['time_vs_trades'] else '')
      for g in tried) + '.']
  if met:
    unsure = [m for m in met if (_contrast(result, m, refs[m]) or {}).get('beyond_noise')
              is False]
    pooled = bool(result.get('seeds'))
    out.append('The aim is met by ' + ', '.join(f'`{m}`' for m in met) + '.' + (
        ' For ' + ', '.join(f'`{m}`' for m in unsure) + ' the AA margin over TRADES-10 is within '
        'two standard errors of 500 images: the figures meet the aim, the evidence that it beats '
        'TRADES-10 under AA is ' + ('not conclusive on one seed alone; the replicate below pools '
                                    'the seeds.' if pooled else 'not yet conclusive.')
        if unsure else ''))
  else:
    out.append('**No variant tried meets the aim yet.**')
  return out


def replicate(result):
  """The comparison run on a second training seed: each seed's margin and their mean."""
  rep = result.get('seeds')
  if not rep:
    return []
  seeds = '; '.join(f'seed {i}: {p["aa"]:+.1f} AA, {p["clean"]:+.1f} clean'
                    for i, p in enumerate(rep['per_seed']))
  out = (f'Replicated on a second training seed (another draw of the 10,000 training images, '
         f'another initialisation and other attack starts; the same 500 test images), '
         f'`{rep["row"]}` against TRADES-10 of the same seed: {seeds}. Over the seeds the '
         f'margin is {rep["aa"]:+.1f} AA points ({_se(rep)}, over the test images of the '
         f'seed-averaged verdicts; the seeds differ by {rep["spread"]:.1f} points) and '
         f'{rep["clean"]:+.1f} clean.')
  if rep['aa'] >= 2.0 and rep['beyond_noise']:
    out += (f' **Over both seeds its margin, {rep["aa"]:+.1f} AA points, meets the aim\'s 2 '
            'points and is more than two standard errors above zero: the aim holds on the '
            'replicate.** (That the margin is 2 points or more, rather than above zero, is its '
            'point estimate, not itself shown beyond noise.)')
  elif rep['aa'] > 0 and rep['beyond_noise']:
    out += (' **Over both seeds it is above TRADES-10 beyond noise, but by less than the aim\'s '
            '2 AA points.**')
  elif rep['aa'] > 0:
    out += (' **Over both seeds its margin over TRADES-10 is within noise: the replicate does '
            'not confirm that it beats TRADES-10 under AA.**')
  else:
    out += ' **Over both seeds it does not beat TRADES-10 under AA.**'
  return [out]


def strongest(result):
  """The study's most robust row under AA, and where the best AGKD-BML row stands against it."""
  rows = [r for r in result.get('rows', []) if r.get('aa') is not None]
  if len(rows) < 2:
    return []
  top = max(rows, key=lambda r: r['aa'])
  out = f'The most robust row of the study under AA is `{top["row"]}` ({top["aa"]:.1f}% AA, ' \
        f'{top["clean"]:.1f}% clean).'
  agkd = [r for r in rows if r['row'].startswith('agkd_bml')]
  best = max(agkd, key=lambda r: r['aa']) if agkd else None
  if best is not None and best is not top:
    out += (f' The best AGKD-BML row, `{best["row"]}`, is {top["aa"] - best["aa"]:.1f} AA points '
            f'below it and {best["clean"] - top["clean"]:+.1f} in clean accuracy.')
  return [out]


def reading_lines(result):
  """The whole reading: standing, ingredients and variants (empty parts left out)."""
  lines = []
  parts = standing(result)
  if parts:
    lines += [' '.join(parts), '']
  ing = ingredients(result)
  if ing:
    lines += ['What each measured ingredient is worth under AA (row minus baseline):', ''] + ing
    lines.append('')
  lines += variants(result) + replicate(result) + strongest(result)
  while lines and not lines[-1]:
    lines.pop()
  if lines:
    lines += ['', 'Every standard error here counts the sampling of the 500 test images only: each '
              'row is one training run, so the variance between training seeds is not in them' +
              (' (the replicate\'s spread between seeds is the one view of it).'
               if result.get('seeds') else '.')]
  return lines
