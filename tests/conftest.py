"""Test setup: two logical CPU devices (for the MirroredStrategy equality tests) and helpers.

The CPU must be split before TensorFlow initialises its devices, so this runs at import, before
any test touches TensorFlow.
"""

import os
import sys

import pytest

import agkd_tf  # pylint: disable=unused-import  (selects the Keras backend first)
from agkd_tf import strategy_utils

strategy_utils.split_cpu(2)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_CIFAR = os.path.join(REPO, '..', 'shared', 'data', 'cifar10-jpeg')


def run_binary(module, *args, cwd=None, timeout=300):
  """Runs `python -m agkd_tf.<module> args...`; returns the CompletedProcess."""
  import subprocess  # pylint: disable=g-import-not-at-top
  env = dict(os.environ)
  env.pop('AGKD_TF_VERBOSE_IMPORT', None)
  return subprocess.run([sys.executable, '-m', f'agkd_tf.{module}', *args], cwd=cwd or REPO,
                        env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def shared_cifar():
  if not os.path.isdir(os.path.join(SHARED_CIFAR, 'train')):
    pytest.skip(f'the shared CIFAR-10 JPEG folder is absent ({SHARED_CIFAR})')
  return SHARED_CIFAR
