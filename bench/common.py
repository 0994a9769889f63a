"""Shared helpers of the benchmarks: machine description and result files.

Every benchmark writes `bench/results/<name>.json` and `<name>.md` holding the figures, the exact
command that produced them and the machine, so anyone can rerun them. Speed is reported as a ratio
against a baseline measured in the same process, alternating the two, because these machines are
noisy and absolute seconds mean little.
"""

import datetime
import json
import os
import platform
import sys

# AGKD_BENCH_RESULTS redirects every benchmark's files (bench/speed.py runs the others into a
# scratch folder, so that its short runs never overwrite their full results).
RESULTS = os.environ.get('AGKD_BENCH_RESULTS') or os.path.join(
    os.path.dirname(os.path.abspath(__file__)), 'results')


def machine():
  """A description of this machine and software stack."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import keras  # pylint: disable=g-import-not-at-top
  cpu = platform.processor() or ''
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          cpu = line.split(':', 1)[1].strip()
          break
  except OSError:
    pass
  gpus = [d.name for d in tf.config.list_logical_devices('GPU')]
  # The 15-minute load average when the results are written: about the core count when the
  # benchmark had the machine to itself, more when other work shared it (ratios then are noisier).
  load = round(os.getloadavg()[2], 2) if hasattr(os, 'getloadavg') else None
  return {'cpu': cpu, 'cpu_features': cpu_features(), 'cores': os.cpu_count(), 'gpus': gpus,
          'load_avg_15m': load,
          # TensorFlow's oneDNN kernels (import agkd_tf turns them on unless the variable is set).
          'onednn': os.environ.get('TF_ENABLE_ONEDNN_OPTS'),
          'python': platform.python_version(), 'tensorflow': tf.__version__,
          'keras': keras.__version__, 'platform': platform.platform()}


# The CPU features that change our speed ratios: the vector width, and native bfloat16 (without
# it TensorFlow emulates bfloat16 and every bfloat16 pass is several times slower).
_FEATURES = ('avx2', 'avx512f', 'avx512_bf16', 'amx_bf16')


def cpu_features():
  """Which of _FEATURES this CPU reports in /proc/cpuinfo (empty where it cannot be read)."""
  try:
    with open('/proc/cpuinfo') as f:
      line = next((l for l in f if l.startswith('flags')), '')
  except OSError:
    return []
  have = set(line.partition(':')[2].split())
  return [f for f in _FEATURES if f in have]


def command():
  return 'python ' + ' '.join([os.path.relpath(sys.argv[0])] + sys.argv[1:])


def write(name, rows, columns, notes='', extra=None):
  """Writes results/<name>.json and results/<name>.md (`extra`: more JSON-only fields)."""
  os.makedirs(RESULTS, exist_ok=True)
  info = {'command': command(), 'machine': machine(),
          'date': datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'),
          'rows': rows, 'notes': notes, **(extra or {})}
  with open(os.path.join(RESULTS, f'{name}.json'), 'w') as f:
    json.dump(info, f, indent=2)
    f.write('\n')
  m = info['machine']
  load = (f', 15-min load average {m["load_avg_15m"]}' if m.get('load_avg_15m') is not None
          else '')
  lines = [f'# {name}', '', f'Command: `{info["command"]}`', '',
           f'Machine: {m["cpu"]} ({", ".join(m["cpu_features"]) or "no AVX2"}), {m["cores"]} '
           f'cores, GPUs: {", ".join(m["gpus"]) or "none"}{load}; '
           f'TensorFlow {m["tensorflow"]}' +
           (f' (TF_ENABLE_ONEDNN_OPTS={m["onednn"]})' if m.get('onednn') is not None else '') +
           f', Keras {m["keras"]}, Python {m["python"]}. '
           f'Date: {info["date"]}.', '']
  if notes:
    lines += [notes, '']
  lines.append('| ' + ' | '.join(c for c, _ in columns) + ' |')
  lines.append('|' + '---|' * len(columns))
  for row in rows:
    cells = []
    for _, key in columns:
      v = row.get(key, '')
      cells.append('-' if v is None else f'{v:.3f}' if isinstance(v, float) else str(v))
    lines.append('| ' + ' | '.join(cells) + ' |')
  with open(os.path.join(RESULTS, f'{name}.md'), 'w') as f:
    f.write('\n'.join(lines) + '\n')
  print('\n'.join(lines))


def build_training(method_name, model_name, splits, attack_steps, device='/cpu:0',
                   jit_compile=False, overrides=None):
  """A compiled training step of `method_name` on fresh weights, as the benchmarks time it.

  `overrides` sets more TrainConfig fields (the method's hyper-parameters of a flagfile).

  AGKD-BML gets a teacher of the same architecture (untrained: speed does not depend on the
  weights) and the class bank of `splits`' training images. Build under the Keras precision
  policy the caller has set.

  Returns:
    (method, step_fn) with step_fn(iterator) -> logs, as `train_lib.make_step_fn` makes it.
  """
  # pylint: disable=g-import-not-at-top
  import tensorflow as tf
  from agkd_tf import data
  from agkd_tf import methods
  from agkd_tf import models
  from agkd_tf import optim
  from agkd_tf import train_lib
  from agkd_tf import train_step
  # pylint: enable=g-import-not-at-top
  strategy = tf.distribute.OneDeviceStrategy(device)
  # float32 attacks unless asked: --attack_dtype=auto would pick bfloat16 on CPUs that have it,
  # and the benchmarks compare recipes across machines (bench/attack_throughput.py times both).
  config = train_lib.TrainConfig(**{'attack_dtype': 'float32', **(overrides or {}),
                                    'model_dir': 'unused',
                                    'model': model_name, 'method': method_name,
                                    'attack_steps': attack_steps})
  mean, std = splits.channel_stats()
  with strategy.scope():
    network = models.build(model_name, splits.image_shape, splits.num_classes, mean, std)
    teacher = bank = None
    if method_name == 'agkd_bml':
      teacher = models.build(model_name, splits.image_shape, splits.num_classes, mean, std)
      teacher.trainable = False
      network.set_weights(teacher.get_weights())
      bank = data.ClassBank(splits.x_train, splits.y_train, splits.num_classes)
    method = methods.build(method_name, network, splits.num_classes,
                           train_lib.method_config(config), teacher=teacher,
                           class_bank=bank, seed=0, flip=splits.flip)
    opt = optim.TorchSGD(0.01, 0.9, False, 5e-4)
    method.compile(optimizer=opt)
    opt.build(network.trainable_variables)
  return method, train_step.make_step_fn(method, strategy, jit_compile)


def pct(value):
  """A percentage rounded to two decimals for a results table (None stays None)."""
  return None if value is None else round(float(value), 2)


def evaluated_with(out, settings):
  """Whether `out` holds an eval.json made with exactly these driver settings."""
  path = os.path.join(out, 'settings.json')
  if not (os.path.isfile(os.path.join(out, 'eval.json')) and os.path.isfile(path)):
    return False
  with open(path) as f:
    return json.load(f) == settings


def mark_evaluated(out, settings):
  """Records the settings of a finished evaluation; written last, so that a killed evaluation
  is never mistaken for a finished one."""
  with open(os.path.join(out, 'settings.json'), 'w') as f:
    json.dump(settings, f)


def cell(value):
  """A Markdown table cell of a README block: '-' for None, two decimals for a float."""
  return '-' if value is None else f'{value:.2f}' if isinstance(value, float) else str(value)


def short_masking(flags_text):
  """The first clause of each masking flag (the figures); the explanation is in the table file."""
  if flags_text == 'none':
    return 'none'
  return '; '.join(f.split(': ')[0] for f in flags_text.split('; '))


def _readme_path(readme=None):
  return readme or os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                'README.md')


def readme_block_text(name, readme=None):
  """The text between README.md's `<!-- name:begin ... -->` line and `<!-- name:end -->`."""
  with open(_readme_path(readme)) as f:
    text = f.read()
  begin, end = f'<!-- {name}:begin', f'<!-- {name}:end -->'
  if begin not in text or end not in text:
    raise SystemExit(f'error: README.md has no {begin} ... --> ... {end} block')
  return text.split(begin, 1)[1].split('\n', 1)[1].split(end, 1)[0].rstrip('\n')


def readme_block(name, lines, readme=None):
  """Replaces README.md's block between `<!-- name:begin ... -->` and `<!-- name:end -->`.

  The block holds figures a script wrote, so the README and the results files agree; the begin
  marker names the command that rewrites it. Written to a temporary file and renamed, so a failure
  never leaves a half-written README.

  Args:
    name: the block's name, e.g. 'attack_throughput'.
    lines: the block's new Markdown lines.
    readme: the README's path (default: the repository's README.md).

  Raises:
    SystemExit: the README has no such block.
  """
  readme = _readme_path(readme)
  with open(readme) as f:
    text = f.read()
  begin, end = f'<!-- {name}:begin', f'<!-- {name}:end -->'
  if begin not in text or end not in text:
    raise SystemExit(f'error: {readme} has no {begin} ... --> ... {end} block')
  head, rest = text.split(begin, 1)
  marker, rest = rest.split('\n', 1)
  _, tail = rest.split(end, 1)
  with open(readme + '.tmp', 'w') as f:
    f.write(head + begin + marker + '\n' + '\n'.join(lines) + '\n' + end + tail)
  os.replace(readme + '.tmp', readme)
