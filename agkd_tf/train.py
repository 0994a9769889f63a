r"""Trains a model with one of the package's methods.

  python -m agkd_tf.train --flagfile=flags/quickstart.cfg --model_dir=/tmp/run

A rerun of the same command resumes from the latest checkpoint in --model_dir. Under
`python -m agkd_tf.launch`, or any launcher that sets TF_CONFIG, `--strategy=multi_worker` trains on
all its workers.
"""


from absl import flags
from absl import logging

import agkd_tf  # pylint: disable=unused-import  (selects the Keras backend first)
from agkd_tf import quiet_tensorflow  # pylint: disable=unused-import  (before TensorFlow)
from agkd_tf.core import errors
from agkd_tf import flags as agkd_flags
from agkd_tf import strategy_utils
from agkd_tf import train_lib

agkd_flags.define_train_flags()
FLAGS = flags.FLAGS


def config_from_flags():
  """Maps the parsed flags onto a TrainConfig (plain values only)."""
  return train_lib.TrainConfig(**agkd_flags.values_from_flags(train_lib.TrainConfig))


def main(argv):
  if len(argv) > 1:
    raise errors.UserError(f'unexpected arguments: {" ".join(argv[1:])}')
  if FLAGS['mart'].present:
    logging.warning('--mart is deprecated and will be removed; it is now --agkd_mart (AGKD-BML\'s '
                    'switch, not --method=mart).')
  strategy_utils.split_cpu(FLAGS.cpu_devices)
  train_lib.train(config_from_flags())


if __name__ == '__main__':
  errors.run_main(main)
