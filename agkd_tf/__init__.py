"""agkd_tf: adversarially robust image classifiers in TensorFlow 2 / Keras 3.

The centrepiece is AGKD-BML: H. Wang, Y. Deng, S. Yoo, H. Ling, Y. Lin, "AGKD-BML: Defense Against
Adversarial Attack by Attention Guided Knowledge Distillation and Bi-directional Metric Learning",
ICCV 2021. Around it sit the defences it is compared with and the attacks that judge them.

Use from Python: `agkd_tf.wrap(model)` turns a Keras model into a defence's network,
`agkd_tf.defend(network, 'agkd_bml', teacher=...)` is the defence as a `keras.Model` to compile
and fit, and `agkd_tf.evaluate_model(model, images, labels)` is the evaluator; single attacks are
in `agkd_tf.attacks`.

Importing the package selects the TensorFlow backend of Keras, so users need not export
KERAS_BACKEND themselves: every model here relies on tf.distribute and tf.function.
"""

import os
import sys

if 'keras' in sys.modules and os.environ.get('KERAS_BACKEND', 'tensorflow') != 'tensorflow':
  raise ImportError(
      'agkd_tf needs the TensorFlow backend of Keras, but keras was already imported with '
      f'KERAS_BACKEND={os.environ["KERAS_BACKEND"]}. Import agkd_tf first or unset it.')
os.environ['KERAS_BACKEND'] = 'tensorflow'

# TensorFlow's oneDNN CPU kernels are on by default only on CPUs with AVX-512 VNNI and newer. On
# an AVX2 CPU they made our attacks about 1.9x and our training steps 1.5-1.7x as fast
# (bench/results/onednn.md); they compute the same maths, with different float rounding. Read
# when TensorFlow loads, so only if it has not; TF_ENABLE_ONEDNN_OPTS=0 keeps TensorFlow's own.
if 'tensorflow' not in sys.modules:
  os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '1')

__version__ = '0.1.0'

# The Python API, imported on first use so that `import agkd_tf` (which every binary does first)
# does not pay for Keras models and the attacks it may never touch.
_API = {'wrap': 'agkd_tf.api', 'defend': 'agkd_tf.api', 'evaluate_model': 'agkd_tf.api',
        'Report': 'agkd_tf.api'}
__all__ = ['Report', 'attacks', 'defend', 'evaluate_model', 'wrap']


def __getattr__(name):
  import importlib  # pylint: disable=g-import-not-at-top
  if name in _API:
    return getattr(importlib.import_module(_API[name]), name)
  if name == 'attacks':
    return importlib.import_module('agkd_tf.attacks')
  raise AttributeError(f'module agkd_tf has no attribute {name!r}')
