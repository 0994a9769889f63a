r"""Exports a training run as a SavedModel.

  python -m agkd_tf.export --model_dir=/tmp/run [--export_dir=DIR]

`serving_default` takes float32 NHWC images in [0, 1] and returns logits and probabilities.
"""

from absl import flags
from absl import logging

import agkd_tf  # pylint: disable=unused-import  (selects the Keras backend first)
from agkd_tf import quiet_tensorflow  # pylint: disable=unused-import  (before TensorFlow)
from agkd_tf.core import errors
from agkd_tf import export_lib
from agkd_tf import flags as agkd_flags

agkd_flags.define_export_flags()
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise errors.UserError(f'unexpected arguments: {" ".join(argv[1:])}')
  path = export_lib.export_run(FLAGS.model_dir, FLAGS.export_dir, FLAGS.checkpoint)
  logging.info('Exported %s', path)
  print(path)


if __name__ == '__main__':
  errors.run_main(main)
