"""Gradient-masking diagnostics: when an evaluation's numbers look too good to be true.

Many defences look robust only because their gradients are masked (Athalye et al., ICML 2018;
Croce & Hein, ICML 2020). `masking_flags` reads an evaluation's accuracies and diagnostics
(eval.json) and says, in sentences, what looks masked: AutoAttack far below PGD-20, restarts or
more steps far below one PGD-20 run, a black-box attack beating the white-box ones, accuracy not
falling as eps grows or staying high at an all but unbounded eps, random outputs. Tables made at
different times re-apply the current rules to old eval.json files.
"""

# How far below PGD-20 a stronger attack may land before we call the numbers suspicious
# (percentage points). For models without masking, AA is typically 1-4 points below PGD-20.
MASKING_GAP = 5.0
RESTART_GAP = 3.0
# CW-20 within this many points of AA: the PGD-AA gap is the cross-entropy loss's, not the
# gradients' (see _margin_diagnosis).
MARGIN_AGREEMENT = 2.0
# "An unbounded attack should approach 0%" (Carlini et al. 2019, "On Evaluating Adversarial
# Robustness"): PGD-20 at eps = 64/255, a quarter of the pixel range, is as good as unbounded for
# CIFAR-scale images and breaks every honest model. Twice the training eps is not: at 16/255 our
# CPU-scale AT model keeps 12.6%, as AT models do, so the sweep's last point is no such test.
LARGE_EPS = 64 / 255
LARGE_EPS_LIMIT = 5.0


def _margin_diagnosis(acc, extra):
  """Says whether CW-20 (margin loss) sees what PGD-20 (cross-entropy) misses.

  A cross-entropy-only gap (the margin attack already lands near AutoAttack with the same 20
  steps) means that the training loss flattened cross-entropy, as MART's and the AutoAttack
  paper's reported-vs-AA gaps show; the gradients still lead somewhere. When the margin attack
  is fooled too, no plain white-box gradient attack is trustworthy on that model. Only said when
  CW-20 ran on the same images as AutoAttack.
  """
  cw20 = acc.get('cw20')
  if cw20 is None or 'pgd20_on_aa_examples' in extra:
    return ''
  if cw20 - acc['aa'] <= MARGIN_AGREEMENT:
    return (f'; CW-20, a margin loss with the same 20 steps, reaches {cw20:.2f}%, so the gap is '
            'specific to the cross-entropy loss: report CW-20 and AA, not PGD')
  return (f'; CW-20 ({cw20:.2f}%) is also {cw20 - acc["aa"]:.2f} points above AA, so the margin '
          'loss is fooled as well')


def masking_flags(acc, extra):
  """Gradient-masking diagnostics from accuracies in percent.

  Args:
    acc: {attack: accuracy %}, as eval.json's 'accuracy'.
    extra: the other diagnostics, as the rest of eval.json; missing ones are not checked.

  Returns:
    A list of sentences, empty when nothing looks masked.
  """
  flags = []
  pgd20 = acc.get('pgd20')
  # AutoAttack may run on the first --aa_examples only: compare it with PGD-20 on those same
  # points, not on the whole subset (a different sample would fake or hide a gap).
  pgd20_aa = extra.get('pgd20_on_aa_examples', pgd20)
  if pgd20_aa is not None and acc.get('aa') is not None and acc['aa'] < pgd20_aa - MASKING_GAP:
    where = (f' on the same {extra["aa_examples"]} images'
             if 'pgd20_on_aa_examples' in extra else '')
    flags.append(f'AutoAttack ({acc["aa"]:.2f}%) is {pgd20_aa - acc["aa"]:.2f} points below '
                 f'PGD-20 ({pgd20_aa:.2f}%){where}: PGD is being fooled, a sign of gradient '
                 f'masking{_margin_diagnosis(acc, extra)}')
  for key, label in (('pgd20_restarts', 'PGD-20 with 5 restarts'), ('pgd100', 'PGD-100')):
    value = extra.get(key, acc.get(key))
    if pgd20 is not None and value is not None and value < pgd20 - RESTART_GAP:
      flags.append(f'{label} ({value:.2f}%) is {pgd20 - value:.2f} points below PGD-20: a single '
                   'PGD-20 run is far from converged (masked or noisy gradients)')
  white = [acc[k] for k in ('fgsm', 'bim10', 'pgd10', 'pgd20', 'cw10', 'cw20', 'mim40')
           if acc.get(k) is not None]
  if white and extra.get('transfer_pgd20') is not None and extra['transfer_pgd20'] < min(white):
    flags.append(f'the black-box transfer attack ({extra["transfer_pgd20"]:.2f}%) beats every '
                 f'white-box attack (best {min(white):.2f}%): white-box gradients are masked')
  for warning in extra.get('aa_warnings', []):
    if 'square' in warning.lower():
      flags.append(f'AutoAttack: {warning}')
  sweep = extra.get('eps_sweep')
  if sweep:
    values = [v for _, v in sorted(sweep.items(), key=lambda kv: float(kv[0]))]
    if any(b > a + 1.0 for a, b in zip(values, values[1:])):
      flags.append('PGD-20 accuracy does not decrease as eps grows '
                   f'({", ".join(f"{v:.1f}%" for v in values)}): masked gradients')
  large = extra.get('pgd20_large_eps')
  if large is not None and large > LARGE_EPS_LIMIT:
    flags.append(f'PGD-20 accuracy at eps = {extra.get("large_eps", LARGE_EPS) * 255:.0f}/255 is '
                 f'still {large:.1f}%: an all but unbounded attack should approach 0%')
  if extra.get('random_outputs'):
    flags.append('the model gives different outputs for the same input across passes '
                 '(randomised defence): use EOT attacks (--aa_version=rand)')
  return flags


# Line markers of eps_plot. Seven is prime to the 20 colours of tab20, so the (colour, marker)
# pairs repeat only after 140 lines; tab20 alone pairs a dark and a light shade of each hue, and the
# marker tells those neighbours apart.
_MARKERS = ('o', 's', '^', 'D', 'v', 'P', 'X')


def eps_styles(n):
  """(colour, marker) of each of n lines: distinct for any n up to 140."""
  from matplotlib import colormaps  # pylint: disable=g-import-not-at-top
  colours = colormaps['tab20'].colors
  return [(colours[i % len(colours)], _MARKERS[i % len(_MARKERS)]) for i in range(n)]


def eps_plot(curves, path, title, dashed=()):
  """Saves PGD-20 accuracy against eps, one line per `curves` entry ({name: eps_sweep}).

  The evaluator draws one model's curve; `bench/robustness_cpu.py` draws every row of its table.
  Matplotlib's default cycle has ten colours, so every line gets its own (colour, marker) instead.

  Args:
    curves: {label: {eps (str or float, in [0, 1] units): accuracy in %}}, in drawing order.
    path: the PNG to write.
    title: the plot's title.
    dashed: labels drawn dashed (ablations).

  Returns:
    [(label, colour, marker, linestyle)] of the lines drawn, as matplotlib holds them.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  from matplotlib import colors as mcolors  # pylint: disable=g-import-not-at-top
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  many = len(curves) > 4
  fig, ax = plt.subplots(figsize=(9.5, 4.8) if many else (4.5, 3.2) if len(curves) < 2
                         else (6.5, 4.2))
  top = 0.0
  for (name, sweep), (colour, marker) in zip(curves.items(), eps_styles(len(curves))):
    items = sorted((float(k), v) for k, v in sweep.items())
    top = max([top] + [v for _, v in items])
    ax.plot([k * 255 for k, _ in items], [v for _, v in items], color=colour, marker=marker,
            linestyle='--' if name in dashed else '-', markersize=6, linewidth=1.4, label=name)
  if many:
    # Outside the axes: inside, the legend would hide the crowded low-eps points.
    ax.legend(fontsize=8, loc='upper left', bbox_to_anchor=(1.01, 1.0), frameon=False)
  elif len(curves) > 1:
    ax.legend(fontsize=7, ncol=2)
  ax.set_xlabel('eps (x/255)')
  ax.set_ylabel('PGD-20 accuracy (%)')
  ax.set_ylim(0, min(100, 10 * (int(top) // 10 + 1)))
  ax.set_title(title)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  drawn = [(line.get_label(), mcolors.to_hex(line.get_color()), line.get_marker(),
            line.get_linestyle()) for line in ax.get_lines()]
  plt.close(fig)
  return drawn
