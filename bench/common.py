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

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results')


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
  return {'cpu': cpu, 'cores': os.cpu_count(), 'gpus': gpus, 'python': platform.python_version(),
          'tensorflow': tf.__version__, 'keras': keras.__version__,
          'platform': platform.platform()}


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
  lines = [f'# {name}', '', f'Command: `{info["command"]}`', '',
           f'Machine: {m["cpu"]}, {m["cores"]} cores, GPUs: {", ".join(m["gpus"]) or "none"}; '
           f'TensorFlow {m["tensorflow"]}, Keras {m["keras"]}, Python {m["python"]}. '
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
