"""tf.distribute strategy selection and device-dependent defaults.

`auto` mirrors over all GPUs when there are several, uses one device otherwise. `mirrored` on a
machine without GPUs mirrors over the logical CPU devices (see `split_cpu`), which is how the tests
check that MirroredStrategy gives the same update as one device.
"""

import tensorflow as tf

from agkd_tf.errors import UserError

STRATEGIES = ('auto', 'one_device', 'mirrored', 'multi_worker')


def split_cpu(n):
  """Splits the physical CPU into n logical devices (must run before TF initialises devices)."""
  if n <= 1:
    return
  cpus = tf.config.list_physical_devices('CPU')
  try:
    tf.config.set_logical_device_configuration(
        cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(n)])
  except RuntimeError:
    # Already initialised (e.g. a second call in one process): keep what exists.
    if len(tf.config.list_logical_devices('CPU')) < n:
      raise


def get_strategy(name):
  """Returns the tf.distribute strategy named by `--strategy`."""
  if name not in STRATEGIES:
    raise UserError(f'unknown strategy "{name}"; valid: {", ".join(STRATEGIES)}')
  gpus = tf.config.list_logical_devices('GPU')
  if name == 'multi_worker':
    return tf.distribute.MultiWorkerMirroredStrategy()
  if name == 'mirrored' or (name == 'auto' and len(gpus) > 1):
    if gpus:
      return tf.distribute.MirroredStrategy(devices=[d.name for d in gpus])
    return mirrored_cpu([d.name for d in tf.config.list_logical_devices('CPU')])
  return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else '/cpu:0')


def mirrored_cpu(devices):
  """MirroredStrategy over logical CPU devices.

  Reductions go through one device: with the default collective ops, the gradient all-reduce and
  synchronized BatchNorm's all-reduce could be issued in different orders on the two replicas and
  abort with a shape mismatch.
  """
  return tf.distribute.MirroredStrategy(devices=devices,
                                        cross_device_ops=tf.distribute.ReductionToOneDevice())


def has_gpu():
  return bool(tf.config.list_physical_devices('GPU'))


def resolve_jit(value):
  """`auto`: XLA on GPU, off on CPU (on our CPUs XLA made a PGD loop about 10x slower)."""
  if value == 'auto':
    return has_gpu()
  return value == 'true'


def resolve_precision(value):
  """`auto`: bfloat16 mixed precision on GPU, float32 on CPU; returns a Keras policy name."""
  if value == 'auto':
    value = 'bfloat16' if has_gpu() else 'float32'
  return {'bfloat16': 'mixed_bfloat16', 'float16': 'mixed_float16', 'float32': 'float32'}[value]
