r"""Starts N local workers of one multi-worker training run, on loopback, for trying it and tests.

  python -m agkd_tf.launch --workers=2 -- --flagfile=flags/quickstart.cfg --model_dir=/tmp/run

Each worker is `python -m agkd_tf.train ARGS --strategy=multi_worker` with its own `TF_CONFIG`
(the standard cluster description `tf.distribute.MultiWorkerMirroredStrategy` reads): a cluster of
N workers on free 127.0.0.1 ports, worker 0 being the chief. Nothing listens beyond loopback.

Output lines are forwarded with a `[worker i]` prefix. When a worker fails, the others would wait
on its collectives forever, so they are stopped and the launcher exits non-zero; a rerun of the
same command resumes every worker from the chief's latest checkpoint (TensorFlow's fault-tolerance
model for MultiWorkerMirroredStrategy: a failed worker is restarted with the others). Workers die
with the launcher, even when it is killed with SIGKILL (Linux).

On a real cluster, set TF_CONFIG per machine yourself and run `python -m agkd_tf.train
--strategy=multi_worker ...` on each, with --model_dir on storage every worker can read.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

from absl import flags

from agkd_tf import flags as agkd_flags
from agkd_tf.core import errors

agkd_flags.define_launch_flags()
FLAGS = flags.FLAGS

# How long a worker asked to stop (SIGTERM) may take before it is killed.
_GRACE_SECONDS = 5.0


def free_ports(n):
  """n distinct free TCP ports on 127.0.0.1.

  All sockets stay bound until every port is chosen, so no port is handed out twice; another
  process could still take one before the worker binds it, which a rerun resolves.
  """
  sockets = []
  try:
    for _ in range(n):
      s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
      s.bind(('127.0.0.1', 0))
      sockets.append(s)
    return [s.getsockname()[1] for s in sockets]
  finally:
    for s in sockets:
      s.close()


def tf_config(addresses, index):
  """The TF_CONFIG of worker `index` in a cluster of `addresses` (worker 0 is the chief)."""
  return json.dumps({'cluster': {'worker': list(addresses)},
                     'task': {'type': 'worker', 'index': index}})


def _train_args(args):
  """The training flags with --strategy=multi_worker, refusing any other strategy."""
  for i, arg in enumerate(args):
    value = None
    if arg.startswith('--strategy='):
      value = arg.partition('=')[2]
    elif arg == '--strategy' and i + 1 < len(args):
      value = args[i + 1]
    if value is not None and value != 'multi_worker':
      raise errors.UserError(f'the launcher runs --strategy=multi_worker, not --strategy={value}')
  return list(args) + ['--strategy=multi_worker']


def _die_with_parent():
  """Makes the child get SIGKILL when the launcher dies (Linux), so no worker is orphaned."""
  try:
    import ctypes  # pylint: disable=g-import-not-at-top
    libc = ctypes.CDLL('libc.so.6', use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
  except (OSError, AttributeError):
    pass


def _forward(stream, out, prefix):
  for line in iter(stream.readline, ''):
    out.write(prefix + line)
    out.flush()
  stream.close()


def _stop(procs):
  for p in procs:
    if p.poll() is None:
      p.terminate()
  deadline = time.time() + _GRACE_SECONDS
  for p in procs:
    try:
      p.wait(timeout=max(0.1, deadline - time.time()))
    except subprocess.TimeoutExpired:
      p.kill()
      p.wait()


def launch(train_args, workers, timeout=0, module='agkd_tf.train'):
  """Runs `python -m module train_args` as `workers` local workers; returns the exit status.

  Args:
    train_args: flags of the training binary (without --strategy, or with multi_worker).
    workers: number of worker processes.
    timeout: seconds after which all workers are stopped (0: none).
    module: the binary each worker runs.

  Returns:
    0 when every worker succeeded, otherwise the status of the first that failed (1 when it was
    killed by a signal).
  """
  args = _train_args(train_args)
  addresses = [f'127.0.0.1:{p}' for p in free_ports(workers)]
  procs, threads = [], []
  for i in range(workers):
    env = dict(os.environ, TF_CONFIG=tf_config(addresses, i))
    procs.append(subprocess.Popen([sys.executable, '-m', module, *args], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  preexec_fn=_die_with_parent))
  for i, p in enumerate(procs):
    sys.stdout.write(f'launch: worker {i} is pid {p.pid} at {addresses[i]}\n')
    for stream, out in ((p.stdout, sys.stdout), (p.stderr, sys.stderr)):
      t = threading.Thread(target=_forward, args=(stream, out, f'[worker {i}] '), daemon=True)
      t.start()
      threads.append(t)
  sys.stdout.flush()

  previous = {}

  def on_signal(signum, frame):
    del frame
    _stop(procs)
    raise SystemExit(128 + signum)

  for signum in (signal.SIGTERM, signal.SIGINT):
    previous[signum] = signal.signal(signum, on_signal)
  failed = None
  deadline = time.time() + timeout if timeout else None
  try:
    while failed is None and any(p.poll() is None for p in procs):
      for i, p in enumerate(procs):
        if p.poll() not in (None, 0):
          failed = i
          break
      if deadline and time.time() > deadline and failed is None:
        _stop(procs)
        for t in threads:
          t.join(timeout=5)
        raise errors.UserError(f'the workers did not finish within --timeout={timeout} s; '
                               'stopped them all')
      time.sleep(0.1)
    if failed is None:
      failed = next((i for i, p in enumerate(procs) if p.returncode != 0), None)
  finally:
    _stop(procs)
    for t in threads:
      t.join(timeout=5)
    for signum, handler in previous.items():
      signal.signal(signum, handler)
  if failed is None:
    return 0
  code = procs[failed].returncode
  how = f'was killed by signal {-code}' if code < 0 else f'exited with status {code}'
  sys.stderr.write(f'error: worker {failed} {how}; stopped the other workers. A rerun of the '
                   'same command resumes from the latest checkpoint.\n')
  sys.stderr.flush()
  return code if code > 0 else 1


def main(argv):
  if len(argv) < 2:
    raise errors.UserError('nothing to launch: give the training flags after --, e.g. '
                           'python -m agkd_tf.launch --workers=2 -- --model_dir=/tmp/run')
  sys.exit(launch(argv[1:], FLAGS.workers, FLAGS.timeout))


if __name__ == '__main__':
  errors.run_main(main)
