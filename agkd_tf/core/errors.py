"""Clear failure for the binaries: bad input becomes one line on stderr and a non-zero exit.

Library code raises `UserError` for anything the user can fix (an unknown name, a missing file, a
checkpoint from another model). The binaries run their `main` through `run_main`, which prints
`error: <message>` and exits with status 2 instead of a traceback wall. Flag parsing errors from
absl (unknown flag, failed validator, malformed or missing flagfile) take the same path. A run
stopped by a signal after saving its state (`Stopped`) prints `stopped: <message>` and exits with
128 + the signal's number.
"""

import contextlib
import logging
import os
import sys

from absl import app
from absl import flags

EXIT_USER_ERROR = 2


class UserError(Exception):
  """An error the user can fix; shown as one line without a traceback."""


class Stopped(Exception):
  """A run stopped on request (SIGTERM, Ctrl-C) after saving its state; it resumes on a rerun.

  The binaries print the message as one line and exit with 128 + the signal's number, the status
  a shell reports for a process killed by that signal, so job schedulers treat it alike.
  """

  def __init__(self, message, signum):
    super().__init__(message)
    self.signum = signum


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


class QuietTensorFlowInfo(logging.Filter):
  """Drops the INFO lines TensorFlow's own modules log through absl.

  Some (the checkpoint saver's "Sharding callback duration", once per save) use absl logging
  directly, not the 'tensorflow' logger, so only their file tells them from ours.
  """

  def filter(self, record):
    if record.levelno >= logging.WARNING:
      return True
    tf = sys.modules.get('tensorflow')
    root = os.path.dirname(getattr(tf, '__file__', None) or '')
    return not (root and record.pathname.startswith(root + os.sep))


def run_main(main):
  """Runs an absl `main(argv)` with one-line errors for bad input."""

  def wrapped(argv):
    # TensorFlow's own INFO lines (saver sharding, asset writing) drown the training log.
    logging.getLogger('tensorflow').setLevel(logging.ERROR)
    logging.getLogger('absl').addFilter(QuietTensorFlowInfo())
    try:
      return main(argv)
    except UserError as e:
      fail(e)
    except Stopped as e:
      sys.stderr.write(f'stopped: {e}\n')
      sys.stderr.flush()
      sys.exit(128 + e.signum)

  app.run(wrapped, flags_parser=_parse_flags)
