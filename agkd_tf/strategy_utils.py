"""tf.distribute strategy selection and device-dependent defaults.

`auto` mirrors over all GPUs when there are several, uses one device otherwise. `mirrored` on a
machine without GPUs mirrors over the logical CPU devices (see `split_cpu`), which is how the tests
check that MirroredStrategy gives the same update as one device.

`multi_worker` is TensorFlow's own `MultiWorkerMirroredStrategy`, with the cluster read from
`TF_CONFIG` the standard way (`python -m agkd_tf.launch` writes it for local workers). Which
worker is the chief, and where a non-chief worker may write its throw-away checkpoints, follow
TensorFlow's multi-worker Keras tutorial.
"""

import json
import os

import tensorflow as tf

from agkd_tf.core.errors import UserError

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
  if name == 'multi_worker':
    return multi_worker()
  gpus = tf.config.list_logical_devices('GPU')
  if name == 'mirrored' or (name == 'auto' and len(gpus) > 1):
    if gpus:
      return tf.distribute.MirroredStrategy(devices=[d.name for d in gpus])
    return mirrored_cpu([d.name for d in tf.config.list_logical_devices('CPU')])
  return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else '/cpu:0')


def tf_config():
  """The parsed `TF_CONFIG` environment variable ({} when unset).

  Raises:
    UserError: TF_CONFIG is not a JSON object with a cluster and this task's type and index.
  """
  text = os.environ.get('TF_CONFIG', '')
  if not text.strip():
    return {}
  try:
    config = json.loads(text)
    cluster, task = config['cluster'], config['task']
    jobs = cluster[task['type']]
    if not 0 <= int(task['index']) < len(jobs):
      raise IndexError(task['index'])
  except (ValueError, KeyError, TypeError, IndexError) as e:
    raise UserError(f'TF_CONFIG is malformed ({type(e).__name__}: {e}); expected '
                    '{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", '
                    '"index": I}}') from None
  return config


def multi_worker():
  """MultiWorkerMirroredStrategy over the cluster of `TF_CONFIG`.

  Must run before TensorFlow executes its first op: collective ops are configured at start-up.
  On CPU the collectives use RING (gRPC); NCCL needs GPUs. On GPUs AUTO picks NCCL.
  """
  if not tf_config():
    raise UserError('--strategy=multi_worker reads the cluster from TF_CONFIG, which is not set; '
                    'start local workers with python -m agkd_tf.launch --workers=N -- ARGS')
  implementation = (tf.distribute.experimental.CommunicationImplementation.AUTO if has_gpu()
                    else tf.distribute.experimental.CommunicationImplementation.RING)
  options = tf.distribute.experimental.CommunicationOptions(implementation=implementation)
  try:
    return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
  except RuntimeError as e:
    raise UserError(f'--strategy=multi_worker could not start ({e}); it must be created before '
                    'TensorFlow runs any op') from None


def task(strategy):
  """(task_type, task_id) of this process in its cluster; (None, 0) outside a cluster."""
  resolver = getattr(strategy, 'cluster_resolver', None)
  if resolver is None or not resolver.task_type:
    return None, 0
  return resolver.task_type, int(resolver.task_id or 0)


def num_workers(strategy):
  """Processes taking part in `strategy` (1 outside a cluster)."""
  resolver = getattr(strategy, 'cluster_resolver', None)
  if resolver is None or not resolver.task_type:
    return 1
  jobs = resolver.cluster_spec().as_dict()
  return sum(len(jobs.get(job, ())) for job in ('chief', 'worker'))


def is_chief(strategy):
  """Whether this process writes the run's outputs.

  As in TensorFlow's multi-worker tutorial: the task of type `chief`, or worker 0 when the cluster
  has no chief; any process outside a cluster is its own chief.
  """
  task_type, task_id = task(strategy)
  if task_type is None or task_type == 'chief':
    return True
  if task_type != 'worker':
    return False
  jobs = strategy.cluster_resolver.cluster_spec().as_dict()
  return 'chief' not in jobs and task_id == 0


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


# CPU flags (/proc/cpuinfo) of native bfloat16 arithmetic, which oneDNN's bfloat16 kernels use.
_BF16_CPU_FLAGS = ('avx512_bf16', 'amx_bf16')


def cpu_bfloat16_flags(cpuinfo='/proc/cpuinfo'):
  """The native-bfloat16 flags this CPU reports (empty where none, or unreadable)."""
  try:
    with open(cpuinfo) as f:
      line = next((l for l in f if l.startswith('flags')), '')
  except OSError:
    return []
  have = set(line.partition(':')[2].split())
  return [f for f in _BF16_CPU_FLAGS if f in have]


def resolve_attack_dtype(value, cpuinfo='/proc/cpuinfo'):
  """`--attack_dtype`: `auto` is bfloat16 on a CPU with native bfloat16, else the network's own.

  bench/attack_throughput.py measured both sides of that choice (README, Speed): on an AMD EPYC
  with AVX-512-BF16, bfloat16 attacks and whole AGKD-BML steps ran faster than float32 with the
  attack's strength unchanged; on one without it, bfloat16 was several times slower. On a GPU the
  network's own policy (`--mixed_precision`) already decides.

  Returns:
    'float32', 'bfloat16', or None for the network's own dtype.
  """
  if value != 'auto':
    return value
  if has_gpu() or not cpu_bfloat16_flags(cpuinfo):
    return None
  return 'bfloat16'


def resolve_precision(value):
  """`auto`: bfloat16 mixed precision on GPU, float32 on CPU; returns a Keras policy name."""
  if value == 'auto':
    value = 'bfloat16' if has_gpu() else 'float32'
  return {'bfloat16': 'mixed_bfloat16', 'float16': 'mixed_float16', 'float32': 'float32'}[value]
