"""The report of an evaluation: Table 1's layout, eval.md, and TensorBoard scalars.

The row layout is the AGKD-BML paper's Table 1 (Wang et al., ICCV 2021) plus an AutoAttack
column; accuracies are percentages, '-' where an attack was not run.
"""

import os

import tensorflow as tf

from agkd_tf import summaries

TABLE_COLUMNS = (('clean', 'clean'), ('fgsm', 'FGSM'), ('bim10', 'BIM(10)'), ('pgd10', 'PGD(10)'),
                 ('pgd20', 'PGD(20)'), ('cw10', 'CW(10)'), ('cw20', 'CW(20)'),
                 ('mim40', 'MIM(40)'), ('aa', 'AA'))
DEFAULT_ATTACKS = tuple(c for c, _ in TABLE_COLUMNS)


def table_row(name, accuracies):
  """One Markdown row in Table 1's layout (percentages, '-' where not evaluated)."""
  cells = [name] + ['-' if accuracies.get(k) is None else f'{accuracies[k]:.2f}'
                    for k, _ in TABLE_COLUMNS]
  return '| ' + ' | '.join(cells) + ' |'


def table_header():
  return ('| model | ' + ' | '.join(h for _, h in TABLE_COLUMNS) + ' |\n|' +
          '---|' * (len(TABLE_COLUMNS) + 1))


def write_summaries(model_dir, values, step):
  """Accuracies in percent to the run's summaries/eval, as eval/<attack> in [0, 1]."""
  writer = tf.summary.create_file_writer(os.path.join(model_dir, 'summaries', 'eval'))
  with writer.as_default(step=step):
    for k, v in values.items():
      if v is not None:
        tf.summary.scalar(summaries.eval_tag(k), v / 100.0)
  writer.flush()


def markdown(result):
  """The report of `assess` (or eval.json) as the Markdown of eval.md."""
  acc, flags = result['accuracy'], result['masking_flags']
  aa_note = (f', AA on the first {result["aa_examples"]}' if 'aa_examples' in result else '')
  md = [f'# Evaluation of {result["model"]}', '',
        f'{result["dataset"]}, eps = {result["eps"] * 255:.1f}/255, {result["num_examples"]} '
        f'class-balanced test images{aa_note}, {result["attack_backend"]} attacks. Accuracy in %.',
        '', table_header(), table_row(result['model'], acc), '']
  if 'aa' in result:
    aa = result['aa']
    md += ['AutoAttack components (points each removed):', '']
    md += [f'- {k}: {v} of {aa["attacked"].get(k, 0)} attacked, '
           f'{aa["time_s"].get(k, 0):.1f} s' for k, v in aa['flipped'].items()]
    if 'pgd20_on_aa_examples' in result:
      md += ['', f'On the {result["aa_examples"]} AutoAttack images: clean '
             f'{result["clean_on_aa_examples"]:.2f}%, PGD-20 '
             f'{result["pgd20_on_aa_examples"]:.2f}%, AA {acc["aa"]:.2f}%.']
    md.append('')
  md += ['Gradient-masking diagnostics: ' + ('none flagged.' if not flags else ''), '']
  md += [f'- {f}' for f in flags]
  return '\n'.join(md) + '\n'
