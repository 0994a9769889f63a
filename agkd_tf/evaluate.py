r"""Evaluates robustness: the paper's attacks, AutoAttack, integrity checks, masking diagnostics.

  python -m agkd_tf.evaluate --model_dir=RUN [--attacks=clean,pgd20,cw20,aa] [--num_examples=N]
  python -m agkd_tf.evaluate --saved_model=DIR --dataset=cifar10 --output_dir=OUT

Writes eval.json and eval.md (one row in the layout of the paper's Table 1, plus AA).
"""


from absl import flags

import agkd_tf  # pylint: disable=unused-import  (selects the Keras backend first)
from agkd_tf import quiet_tensorflow  # pylint: disable=unused-import  (before TensorFlow)
from agkd_tf.core import errors
from agkd_tf.evaluation import report as eval_report
from agkd_tf import evaluation
from agkd_tf import flags as agkd_flags

agkd_flags.define_evaluate_flags()
FLAGS = flags.FLAGS


def config_from_flags():
  values = agkd_flags.values_from_flags(evaluation.EvalConfig)
  values['attacks'] = tuple(a.lower() for a in values['attacks'])
  return evaluation.EvalConfig(**values)


def main(argv):
  if len(argv) > 1:
    raise errors.UserError(f'unexpected arguments: {" ".join(argv[1:])}')
  try:
    result = evaluation.evaluate(config_from_flags())
  except evaluation.IntegrityError as e:
    raise errors.UserError(f'integrity check failed, no result written: {e}') from None
  print(eval_report.table_header())
  print(eval_report.table_row(result['model'], result['accuracy']))


if __name__ == '__main__':
  errors.run_main(main)
