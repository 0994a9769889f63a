r"""Evaluates robustness: the paper's attacks, AutoAttack, integrity checks, masking diagnostics.

  python -m agkd_tf.evaluate --model_dir=RUN [--attacks=clean,pgd20,cw20,aa] [--num_examples=N]
  python -m agkd_tf.evaluate --saved_model=DIR --dataset=cifar10 --output_dir=OUT

Writes eval.json and eval.md (one row in the layout of the paper's Table 1, plus AA).
"""

import dataclasses

from absl import flags

import agkd_tf  # pylint: disable=unused-import  (selects the Keras backend first)
from agkd_tf import quiet_tensorflow  # pylint: disable=unused-import  (before TensorFlow)
from agkd_tf import errors
from agkd_tf import eval_report
from agkd_tf import evaluate_lib
from agkd_tf import flags as agkd_flags

agkd_flags.define_evaluate_flags()
FLAGS = flags.FLAGS


def config_from_flags():
  fields = {f.name for f in dataclasses.fields(evaluate_lib.EvalConfig)}
  values = {name: FLAGS[name].value for name in fields if name in FLAGS}
  values['attacks'] = tuple(a.strip().lower() for a in FLAGS.attacks if a.strip())
  return evaluate_lib.EvalConfig(**values)


def main(argv):
  if len(argv) > 1:
    raise errors.UserError(f'unexpected arguments: {" ".join(argv[1:])}')
  try:
    result = evaluate_lib.evaluate(config_from_flags())
  except evaluate_lib.IntegrityError as e:
    raise errors.UserError(f'integrity check failed, no result written: {e}') from None
  print(eval_report.table_header())
  print(eval_report.table_row(result['model'], result['accuracy']))


if __name__ == '__main__':
  errors.run_main(main)
