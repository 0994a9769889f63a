"""The binaries' entry point: TensorFlow imported without its start-up chatter.

The binaries (`python -m agkd_tf.train`, `evaluate`, `export`, `report`) promise one clear line
on bad input; the CUDA build of TensorFlow prints a screenful on every CPU-only import first.
Importing this module, before anything imports TensorFlow, filters those known lines out of what
TensorFlow writes to stderr at import. Only the binaries import it: `import agkd_tf` from a user's
program leaves the process's file descriptors alone.
"""

import os
import sys

# TensorFlow's C++ start-up chatter (CUDA probing on CPU machines) buries our own messages.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

# Lines the CUDA build of TensorFlow prints on every CPU-only import, before absl logging is
# initialised (so no environment variable silences them). They bury the one-line errors of our
# binaries; anything else TensorFlow prints at import is passed through.
_IMPORT_NOISE = ('log messages before absl::InitializeLog', 'cudart_stub.cc',
                 'cpu_feature_guard.cc', 'To enable the following instructions',
                 'Unable to register cu', 'computation placer already registered',
                 'failed call to cuInit', 'cuda_platform.cc', 'cuda_executor.cc',
                 # Printed on CPUs where oneDNN's optimisations are on (AVX-512 VNNI and up).
                 'oneDNN custom operations are on')


def import_tensorflow():
  """Imports TensorFlow with its known start-up lines filtered out of file descriptor 2."""
  if 'tensorflow' in sys.modules or os.environ.get('AGKD_TF_VERBOSE_IMPORT'):
    return
  import tempfile  # pylint: disable=g-import-not-at-top
  try:
    sys.stderr.flush()
    saved = os.dup(2)
  except (OSError, ValueError):
    return
  with tempfile.TemporaryFile() as captured:
    os.dup2(captured.fileno(), 2)
    try:
      import tensorflow  # pylint: disable=g-import-not-at-top,unused-import
      tensorflow.config.list_physical_devices('GPU')  # Device probing prints too.
    finally:
      os.dup2(saved, 2)
      os.close(saved)
      captured.seek(0)
      lines = captured.read().decode('utf-8', 'replace').splitlines()
      kept = [l for l in lines if l.strip() and not any(n in l for n in _IMPORT_NOISE)]
      if kept:
        sys.stderr.write('\n'.join(kept) + '\n')



import_tensorflow()
