"""The binaries end bad input with one clear line and a non-zero exit, and write nothing."""

import os
import subprocess
import sys

import pytest

from tests import conftest
from tests import helpers


def _assert_one_line_error(proc, pattern=None):
  assert proc.returncode != 0, proc.stdout + proc.stderr
  assert 'Traceback' not in proc.stderr, proc.stderr
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith('error: '), proc.stderr
  if pattern:
    assert pattern in lines[0], lines[0]
  return lines[0]


TRAIN_CASES = [
    (['--dataset=imagenet'], 'unknown dataset "imagenet"'),
    (['--model=resnet9'], 'unknown model "resnet9"'),
    (['--method=magic'], 'unknown method "magic"'),
    (['--strategy=tpu'], '--strategy must be one of'),
    (['--eps=8'], '8/255 = 0.0314, not 8'),
    (['--lr=-1'], '--lr must lie in (0, 10]'),
    (['--label_smoothing=1.5'], '--label_smoothing must lie in [0, 1)'),
    (['--dataset=folder:/nonexistent/images'], 'does not exist'),
    (['--no_such_flag=1'], "Unknown command line flag 'no_such_flag'"),
    (['--flagfile=/nonexistent.cfg'], 'Unable to open flagfile'),
]


@pytest.mark.parametrize('args,pattern', TRAIN_CASES)
def test_train_bad_input(tmp_path, args, pattern):
  model_dir = tmp_path / 'run'
  proc = conftest.run_binary('train', f'--model_dir={model_dir}', '--model=cnn-cpu',
                             '--dataset=synthetic:8', *args)
  _assert_one_line_error(proc, pattern)
  assert not model_dir.exists()


def test_train_corrupt_image_and_unwritable_model_dir(tmp_path):
  root = helpers.write_image_folder(str(tmp_path / 'imgs'), fmt='jpg')
  with open(os.path.join(root, 'test', 'cat', '000.jpg'), 'wb') as f:
    f.write(b'not an image')
  proc = conftest.run_binary('train', f'--model_dir={tmp_path / "run"}', '--model=cnn-cpu',
                             f'--dataset=folder:{root}')
  _assert_one_line_error(proc, '000.jpg')
  assert not (tmp_path / 'run').exists()
  blocker = tmp_path / 'a_file'
  blocker.write_text('x')
  proc = conftest.run_binary('train', f'--model_dir={blocker}/run', '--model=cnn-cpu',
                             '--dataset=synthetic:8', '--train_examples=64', '--epochs=1',
                             '--batch_size=32')
  _assert_one_line_error(proc, 'not writable')


def test_train_then_export_then_bad_export(tmp_path):
  run = tmp_path / 'run'
  proc = conftest.run_binary('train', f'--model_dir={run}', '--model=cnn-cpu',
                             '--dataset=synthetic:8', '--train_examples=64', '--test_examples=20',
                             '--epochs=1', '--batch_size=32', '--eval_attack_steps=1',
                             '--eval_examples=10', '--verbose=2', '--export=false',
                             '--checkpoint_every_steps=1')
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert (run / 'result.json').is_file() and not (run / 'export').exists()
  # The log is ours: the epoch line, not TensorFlow's line per checkpoint save.
  assert 'epoch 1/1' in proc.stderr + proc.stdout
  assert 'Sharding callback' not in proc.stderr + proc.stdout
  proc = conftest.run_binary('export', f'--model_dir={run}', f'--export_dir={tmp_path / "sm"}')
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert (tmp_path / 'sm' / 'saved_model.pb').is_file()
  # A rerun with another model must not touch the run.
  proc = conftest.run_binary('train', f'--model_dir={run}', '--model=wrn-16-4',
                             '--dataset=synthetic:8', '--train_examples=64', '--epochs=1',
                             '--batch_size=32')
  _assert_one_line_error(proc, 'not wrn-16-4')
  proc = conftest.run_binary('export', f'--model_dir={tmp_path / "nothing"}')
  _assert_one_line_error(proc, 'not a training run directory')


def test_the_recipe_study_rows_share_one_footing():
  """Rows of flags/bench_cpu/recipe/ differ only in the method, its attack and the start."""
  root = os.path.join(conftest.REPO, 'flags', 'bench_cpu', 'recipe')
  footing = ('dataset', 'model', 'train_examples', 'epochs', 'batch_size', 'lr', 'momentum',
             'nesterov', 'weight_decay', 'weight_decay_variables', 'lr_schedule',
             'lr_decay_epochs', 'lr_decay_factor', 'eval_examples', 'eval_attack_steps',
             'attack_dtype')


  def read(path):
    # A nested --flagfile's values in its place, as absl reads them.
    values = {}
    with open(path) as f:
      for key, value in (l.strip()[2:].split('=', 1) for l in f if l.startswith('--')):
        if key == 'flagfile':
          values.update(read(os.path.join(conftest.REPO, value)))
        else:
          values[key] = value
    return values

  rows = {}
  for name in sorted(os.listdir(root)):
    if name == 'teacher_ls05.cfg':
      continue
    rows[name] = read(os.path.join(root, name))
  assert {'agkd_bml_k10.cfg', 'agkd_bml_k5.cfg', 'agkd_bml_k2.cfg', 'at10.cfg',
          'at10_init_teacher.cfg', 'trades10.cfg', 'agkd_bml_k10_teacher_ls0.cfg',
          'agkd_bml_k10_trades.cfg', 'agkd_bml_k10_untargeted.cfg'} <= set(rows)
  reference = rows['agkd_bml_k10.cfg']
  for name, values in rows.items():
    assert {k: values.get(k) for k in footing} == {k: reference[k] for k in footing}, name
  assert reference['epochs'] == '12' and reference['lr_decay_epochs'] == '6,9'
  assert rows['agkd_bml_k10.cfg']['attack_steps'] == '10'
  assert rows['at10_init_teacher.cfg']['init_from'] == rows['agkd_bml_k10.cfg']['teacher_dir']
  # Our variants change one flag of the official row each.
  for name, change in (('agkd_bml_k10_trades.cfg', {'agkd_loss': 'trades', 'trades_beta': '6'}),
                       ('agkd_bml_k10_untargeted.cfg', {'agkd_attack': 'untargeted'})):
    assert rows[name] == {**reference, **change}, name
  # A second training seed is its first seed's row with --seed=1 and nothing else.
  for name in ('trades10_seed1.cfg', 'agkd_bml_k4_trades_untargeted_seed1.cfg'):
    assert rows[name] == {**rows[name.replace('_seed1', '')], 'seed': '1'}, name


def test_every_flagfile_parses_and_names_what_it_reproduces():
  """All flagfiles resolve to a valid TrainConfig, and each says in a comment what it reproduces."""
  root = os.path.join(conftest.REPO, 'flags')
  names = sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root)
                 for f in fs if f.endswith('.cfg'))
  assert 'cifar10_agkd_bml_cpu.cfg' in names
  for name in names:
    with open(os.path.join(conftest.REPO, 'flags', name)) as f:
      comments = ' '.join(l for l in f if l.startswith('#'))
    assert 'Reproduces' in comments or 'Ours, not a paper row' in comments, name
  script = (
      'import dataclasses, sys\n'
      'from agkd_tf import train, train_lib\n'
      'for path in sys.argv[1:]:\n'
      '  train.FLAGS.unparse_flags()\n'
      '  train.FLAGS(["train", "--flagfile=" + path, "--model_dir=/tmp/unused"])\n'
      '  config = train.config_from_flags()\n'
      # A study row starts from another row's finished run (--init_from=runs/...), which only
      # exists once that row has trained; everything else is checked.
      '  if config.init_from:\n'
      '    assert config.init_from.startswith("runs/"), config.init_from\n'
      '    config = dataclasses.replace(config, init_from=None)\n'
      '  train_lib._check_config(config)\n'
      '  print(path, config.method, config.model, config.epochs)\n')
  proc = subprocess.run([sys.executable, '-c', script] + [f'flags/{n}' for n in names],
                        cwd=conftest.REPO, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert len(proc.stdout.splitlines()) == len(names), proc.stdout
  assert 'flags/cifar10_agkd_bml_wrn34_aa.cfg agkd_bml wrn-34-10 105' in proc.stdout


def test_importing_the_package_leaves_stderr_and_tensorflow_alone():
  """Only the binaries filter TensorFlow's import chatter (by redirecting file descriptor 2)."""
  script = ('import sys, agkd_tf\n'
            'print("agkd_tf.quiet_tensorflow" in sys.modules, "tensorflow" in sys.modules)\n'
            'from agkd_tf import train\n'
            'print("agkd_tf.quiet_tensorflow" in sys.modules)\n')
  proc = subprocess.run([sys.executable, '-c', script], cwd=conftest.REPO, capture_output=True,
                        text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.split() == ['False', 'False', 'True']


def test_tensorflow_info_lines_are_filtered_and_ours_kept(tmp_path):
  # pylint: disable=g-import-not-at-top
  import logging
  import tensorflow as tf
  from absl import logging as absl_logging
  from agkd_tf.core import errors
  # pylint: enable=g-import-not-at-top
  quiet = errors.QuietTensorFlowInfo()
  tf_file = os.path.join(os.path.dirname(tf.__file__), 'python', 'checkpoint',
                         'functional_saver.py')
  ours = os.path.join(conftest.REPO, 'agkd_tf', 'train_loop.py')
  record = lambda path, level: logging.LogRecord('absl', level, path, 1, 'm', None, None)
  assert not quiet.filter(record(tf_file, logging.INFO))
  assert quiet.filter(record(tf_file, logging.WARNING))
  assert quiet.filter(record(ours, logging.INFO))
  # A real save logs through absl from TensorFlow's saver; the filter drops it.
  seen = []
  handler = logging.Handler()
  handler.emit = seen.append
  handler.addFilter(quiet)
  absl_logger = logging.getLogger('absl')
  absl_logger.addHandler(handler)
  old_level = absl_logger.level
  absl_logger.setLevel(logging.INFO)
  try:
    tf.train.Checkpoint(v=tf.Variable(1.0)).save(str(tmp_path / 'ckpt'))
    absl_logging.info('ours')
  finally:
    absl_logger.removeHandler(handler)
    absl_logger.setLevel(old_level)
  assert [r.getMessage() for r in seen] == ['ours']
