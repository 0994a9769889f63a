"""Small file helpers: atomic JSON writes and model_dir checks.

Outputs are written under a temporary name and renamed into place, so a crash or an error never
leaves a half-written result.json or flags.json behind.
"""

import json
import os
import tempfile

from agkd_tf.core.errors import UserError


def write_json_atomic(path, obj):
  """Writes `obj` as indented JSON to `path` via a temporary file and an atomic rename."""
  directory = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(prefix='.tmp-', suffix='.json', dir=directory)
  try:
    with os.fdopen(fd, 'w') as f:
      json.dump(obj, f, indent=2, sort_keys=True, default=str)
      f.write('\n')
    # mkstemp creates 0600 files; results are meant to be shared like any other file.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def read_json(path):
  """Reads a JSON file, raising UserError with the path when it is unreadable."""
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise UserError(f'{path} is not a readable JSON file ({type(e).__name__})') from None


def make_writable_dir(path, what='--model_dir'):
  """Creates `path` if needed and proves it writable with a probe file.

  Running as root makes `os.access` useless (it says yes to read-only mounts), so we really
  write. Directories this call created are removed again when the probe fails.

  Raises:
    UserError: the path is missing, a file, or not writable.
  """
  if not path:
    raise UserError(f'{what} is required')
  path = os.path.abspath(path)
  # '--model_dir=/a/b' for a flag, 'the export directory /a/b' for a description.
  named = f'{what}={path}' if what.startswith('--') else f'{what} {path}'
  if os.path.exists(path) and not os.path.isdir(path):
    raise UserError(f'{named} exists and is not a directory')
  created = []
  probe = path
  while not os.path.exists(probe):
    created.append(probe)
    probe = os.path.dirname(probe)
  try:
    os.makedirs(path, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix='.write-probe-', dir=path)
    os.close(fd)
    os.remove(tmp)
  except OSError as e:
    for d in created:
      try:
        os.rmdir(d)
      except OSError:
        pass
    raise UserError(f'{named} is not writable ({e.strerror})') from None
  return path
