"""Clear failure for the binaries: bad input becomes one line on stderr and a non-zero exit.

Library code raises `UserError` for anything the user can fix (an unknown name, a missing file, a
checkpoint from another model). The binaries run their `main` through `run_main`, which prints
`error: <message>` and exits with status 2 instead of a traceback wall. Flag parsing errors from
absl (unknown flag, failed validator, malformed or missing flagfile) take the same path.
"""

import contextlib
import logging
import sys

from absl import app
from absl import flags

EXIT_USER_ERROR = 2


class UserError(Exception):
  """An error the user can fix; shown as one line without a traceback."""


@contextlib.contextmanager
def as_value_error():
  """Turns a `UserError` into the `ValueError` a Python caller of the API expects."""
  try:
    yield
  except UserError as e:
    raise ValueError(str(e)) from None


def fail(message):
  """Prints `error: message` to stderr and exits with EXIT_USER_ERROR."""
  # One line: collapse any embedded newlines so the message stays greppable.
  text = ' '.join(str(message).replace('ERROR:: ', '').split())
  sys.stderr.write(f'error: {text}\n')
  sys.stderr.flush()
  sys.exit(EXIT_USER_ERROR)


def _parse_flags(argv):
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    fail(e)


def run_main(main):
  """Runs an absl `main(argv)` with one-line errors for bad input."""

  def wrapped(argv):
    # TensorFlow's own INFO lines (saver sharding, asset writing) drown the training log.
    logging.getLogger('tensorflow').setLevel(logging.ERROR)
    try:
      return main(argv)
    except UserError as e:
      fail(e)

  app.run(wrapped, flags_parser=_parse_flags)
