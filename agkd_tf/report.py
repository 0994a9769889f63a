r"""Merges the evaluations of several runs into one Markdown table, the way Table 1 reads.

  python -m agkd_tf.report RUN_OR_EVAL_DIR... [--output=table.md]

Each argument is a run directory (its eval/eval.json is read), an evaluation directory or an
eval.json file. Rows are runs, columns the paper's attacks plus AutoAttack, and the masking flags
of each run are listed under the table.
"""

import os

from absl import flags

import agkd_tf  # pylint: disable=unused-import
from agkd_tf import quiet_tensorflow  # pylint: disable=unused-import  (before TensorFlow)
from agkd_tf import flags as agkd_flags
from agkd_tf.core import errors
from agkd_tf.evaluation import report as eval_report
from agkd_tf import io_utils

agkd_flags.define_report_flags()
FLAGS = flags.FLAGS


def find_eval(path):
  for candidate in (path, os.path.join(path, 'eval.json'),
                    os.path.join(path, 'eval', 'eval.json')):
    if os.path.isfile(candidate):
      return candidate
  raise errors.UserError(f'{path}: no eval.json found (run python -m agkd_tf.evaluate first)')


def merge(paths):
  """The Markdown table of the evaluations found at `paths`."""
  rows, notes = [], []
  for path in paths:
    result = io_utils.read_json(find_eval(path))
    name = os.path.basename(os.path.normpath(path if os.path.isdir(path)
                                             else os.path.dirname(path)))
    if name == 'eval':
      name = os.path.basename(os.path.dirname(os.path.normpath(path)))
    rows.append(eval_report.table_row(name, result['accuracy']))
    for flag in result.get('masking_flags', []):
      notes.append(f'- {name}: {flag}')
  lines = [eval_report.table_header()] + rows
  lines += ['', 'Gradient-masking flags:' if notes else 'Gradient-masking flags: none.'] + notes
  return '\n'.join(lines) + '\n'


def main(argv):
  if len(argv) < 2:
    raise errors.UserError('give one or more run or evaluation directories')
  table = merge(argv[1:])
  print(table, end='')
  if FLAGS.output:
    with open(FLAGS.output, 'w') as f:
      f.write(table)


if __name__ == '__main__':
  errors.run_main(main)
