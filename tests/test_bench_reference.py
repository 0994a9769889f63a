"""Scripts that measure us against official PyTorch code: official_throughput.py, aa_parity.py,
and aa_profile.py, which splits our AutoAttack's time into network passes and the rest (it needs
no torch and is tested on a tiny network).

The first two need torch (never a package dependency), so CI checks what runs without it: the
patch list applies to the official sources exactly as written and refuses sources it does not
match, and each script exits with one clear line when torch is absent. With torch and a checkout
of the official code (AGKD_OFFICIAL_DIR), a tiny end-to-end run is checked too; without them it
skips with the reason.
"""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

sys.path.insert(0, REPO)
# pylint: disable=g-import-not-at-top,wrong-import-position
from bench import aa_parity
from bench import official_throughput
# pylint: enable=g-import-not-at-top,wrong-import-position



def _fake_official(root):
  """A tree shaped like hongw579/AGKD-BML whose files hold each patch's text as often as needed."""
  texts = {}
  for p in official_throughput.PATCHES:
    texts.setdefault(p.path, []).extend([p.old] * p.count)
  root.mkdir()
  (root / 'custom_models').mkdir()
  (root / 'custom_models' / '__init__.py').write_text('')
  (root / 'argument.py').write_text('')
  for name, parts in texts.items():
    (root / name).write_text('\n# --\n'.join(parts) + '\n')
  return root


def test_patches_apply_once_each_and_change_only_their_text(tmp_path):
  src = _fake_official(tmp_path / 'official')
  dst = tmp_path / 'patched'
  dst.mkdir()
  official_throughput.apply_patches(str(src), str(dst))
  for name in ('main.py', 'utils.py'):
    text = (dst / name).read_text()
    for p in official_throughput.PATCHES:
      if p.path == name:
        assert p.old not in text or p.old in p.new, p.why
        assert text.count(p.new) >= p.count, p.why
  assert (dst / 'argument.py').exists() and (dst / 'custom_models' / '__init__.py').exists()


def test_a_patch_that_no_longer_matches_is_refused(tmp_path):
  src = _fake_official(tmp_path / 'official')
  (src / 'utils.py').write_text((src / 'utils.py').read_text().replace('np.int)', 'np.int64)'))
  dst = tmp_path / 'patched'
  dst.mkdir()
  with pytest.raises(SystemExit, match='numpy 2 removed the np.int alias.*found 0'):
    official_throughput.apply_patches(str(src), str(dst))


def test_a_folder_that_is_not_the_official_code_is_refused(tmp_path):
  dst = tmp_path / 'patched'
  dst.mkdir()
  with pytest.raises(SystemExit, match='not a checkout of hongw579/AGKD-BML'):
    official_throughput.apply_patches(str(tmp_path), str(dst))


@pytest.mark.skipif(importlib.util.find_spec('torch') is not None,
                    reason='torch is installed here; the no-torch message cannot be shown')
@pytest.mark.parametrize('script,arg,message', [
    ('official_throughput.py', '--official_dir=.', 'needs torch and torchvision'),
    ('aa_parity.py', '--models=m=unused', 'needs torch (CPU wheel) and pyautoattack')])
def test_without_torch_each_script_says_so_in_one_line(tmp_path, script, arg, message):
  proc = subprocess.run([sys.executable, os.path.join(REPO, 'bench', script), arg], cwd=REPO,
                        capture_output=True, text=True, timeout=120,
                        env={**os.environ, 'AGKD_BENCH_RESULTS': str(tmp_path / 'results')})
  assert proc.returncode != 0
  assert proc.stderr.strip().splitlines()[-1].startswith(f'error: bench/{script} {message}')
  assert 'Traceback' not in proc.stderr
  assert not (tmp_path / 'results').exists()


_OFFICIAL = os.environ.get('AGKD_OFFICIAL_DIR', '')
_DATA = os.path.join(REPO, '..', 'shared', 'data', 'cifar10-jpeg')


@pytest.mark.skipif(importlib.util.find_spec('torch') is None or not os.path.isdir(_OFFICIAL)
                    or not os.path.isdir(_DATA),
                    reason='needs torch, AGKD_OFFICIAL_DIR (a checkout of hongw579/AGKD-BML) and '
                    'the shared CIFAR-10 folder')
def test_tiny_run_against_the_official_code(tmp_path):
  proc = subprocess.run(
      [sys.executable, os.path.join(REPO, 'bench', 'official_throughput.py'),
       f'--official_dir={_OFFICIAL}', '--ks=2', '--steps=1',
       '--rounds=1', '--batch_size=4', '--train_examples=40', f'--dataset={_DATA}',
       '--ours_attack_dtypes=float32,bfloat16'],
      cwd=REPO, capture_output=True, text=True, timeout=600,
      env={**os.environ, 'AGKD_BENCH_RESULTS': str(tmp_path)})
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads((tmp_path / 'official_throughput.json').read_text())
  # One row per dtype of our attack passes, each against the same official steps.
  assert [r['ours_attack_dtype'] for r in result['rows']] == ['float32', 'bfloat16']
  for row in result['rows']:
    assert row['k'] == 2 and row['ours_img_per_s'] > 0 and row['official_img_per_s'] > 0
  assert result['rows'][0]['official_img_per_s'] == result['rows'][1]['official_img_per_s']
  assert len(result['patches']) == len(official_throughput.PATCHES)


def test_the_official_autoattack_log_is_read_per_attack():
  lines = ['using standard version including apgd-ce, apgd-t, fab-t, square.',
           'initial accuracy: 50.00%',
           'apgd-ce - 1/1 - 20 out of 100 successfully perturbed',
           'robust accuracy after APGD-CE: 30.00% (total time 12.5 s)',
           'robust accuracy after APGD-T: 27.50% (total time 40.0 s)',
           'robust accuracy: 27.50%']
  assert aa_parity.parse_official_log(lines) == {'apgd-ce': (0.3, 12.5), 'apgd-t': (0.275, 40.0)}


@pytest.mark.skipif(importlib.util.find_spec('torch') is None, reason='needs torch (CPU wheel)')
def test_the_gradient_bridge_gives_tensorflows_logits_and_gradient():
  import numpy as np
  import tensorflow as tf
  import torch
  w = tf.constant(np.random.default_rng(0).normal(size=(4 * 4 * 3, 5)).astype(np.float32))

  def logits_fn(x):
    return tf.matmul(tf.reshape(tf.square(x), [-1, 4 * 4 * 3]), w)

  x = np.random.default_rng(1).uniform(size=(2, 4, 4, 3)).astype(np.float32)
  y = np.array([1, 3])
  bridge = aa_parity.make_bridge(logits_fn)
  xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).requires_grad_()
  out = bridge(xt)
  loss = torch.nn.functional.cross_entropy(out, torch.from_numpy(y), reduction='sum')
  (grad,) = torch.autograd.grad(loss, [xt])
  xs = tf.constant(x)
  with tf.GradientTape() as tape:
    tape.watch(xs)
    tf_logits = logits_fn(xs)
    tf_loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(y, tf_logits))
  np.testing.assert_allclose(out.detach().numpy(), tf_logits.numpy(), rtol=1e-6)
  np.testing.assert_allclose(grad.numpy().transpose(0, 2, 3, 1), tape.gradient(tf_loss, xs),
                             rtol=1e-5, atol=1e-6)


def _chunk(indices, ours, official, ours_s, official_s, removed):
  attacks = aa_parity.ATTACKS
  return {'indices': indices, 'ours': ours, 'official': official, 'ours_s': ours_s,
          'official_s': official_s, 'bridge_overhead': 1.4, 'load_before': 1.0,
          'load_after': 2.0, 'ours_max_perturbation': 0.031, 'official_max_perturbation': 0.0313,
          'ours_removed': dict(zip(attacks, removed[0])),
          'official_removed': dict(zip(attacks, removed[1])),
          'ours_time_s': dict.fromkeys(attacks, 1.0), 'official_time_s': dict.fromkeys(attacks, 2.0)}


def test_parity_chunks_are_strided_and_add_up_image_by_image():
  # Strided parts: on class-sorted images each part holds every class.
  labels = [c for c in range(4) for _ in range(6)]
  parts = aa_parity.chunk_indices(len(labels), 3)
  assert [sorted({labels[i] for i in p}) for p in parts] == [[0, 1, 2, 3]] * 3
  assert sorted(i for p in parts for i in p) == list(range(24))

  a = _chunk([0, 2, 4], '110', '100', 10.0, 30.0, ([3, 1, 0, 0], [3, 2, 0, 0]))
  b = _chunk([1, 3, 5], '001', '011', 20.0, 30.0, ([1, 0, 0, 0], [1, 0, 0, 0]))
  row = aa_parity.aggregate([a, b], 8)
  assert (row['images'], row['images_of'], row['chunks_done']) == (6, '6 of 8', 2)
  assert row['ours_robust'] == 50.0 and row['official_robust'] == 50.0
  # Image 2 robust only under ours, image 3 only under the official: 4 of 6 alike.
  assert row['only_ours_indices'] == [2] and row['only_official_indices'] == [3]
  assert round(row['alike'], 3) == 66.667 and row['robust_gap'] == 0.0
  assert row['time_ratio'] == 0.5 and row['chunk_time_ratios'] == [10 / 30, 20 / 30]
  assert row['removed'] == 'apgd-ce 4/4, apgd-t 1/2, fab-t 0/0, square 0/0'
  assert aa_parity.aggregate([a, b], 6)['images_of'] == '6'


def test_profile_times_each_attack_against_its_network_passes(tmp_path):
  # pylint: disable=g-import-not-at-top
  import numpy as np
  import tensorflow as tf
  from bench import aa_profile
  from tests import helpers
  # pylint: enable=g-import-not-at-top
  # The robust images come from the kept chunks' per-image verdicts of ours.
  settings = {'dataset': 'folder:x', 'num_examples': 6, 'seed': 0, 'eps': 0.03}
  for i, (idx, ours) in enumerate([([0, 2, 4], '101'), ([1, 3, 5], '010')]):
    (tmp_path / f'm.chunk{i}.json').write_text(json.dumps(
        {'indices': idx, 'ours': ours, 'settings': settings}))
  assert aa_profile.robust_images(str(tmp_path), 'm') == ([0, 3, 4], settings)

  network = helpers.dense_network(input_shape=(4, 4, 3), num_classes=4)
  x = tf.random.stateless_uniform([3, 4, 4, 3], [0, 1]).numpy()
  logits_fn = lambda z: network(z, training=False)['logits']
  y = np.argmax(logits_fn(x), 1).astype(np.int32)
  timers = aa_profile.make_timers(logits_fn, x, y, 2, 0.03)
  ms = aa_profile.profile(timers, 3, 2, 1)
  assert set(ms) == {'forward', 'gradient', *aa_profile.ATTACKS}
  assert all(v > 0 for v in ms.values())

  # Fixed figures: the passes of each attack, their share, and the estimate built on them.
  ms = {'forward': 1.0, 'gradient': 2.0, 'apgd-ce': 2.5, 'apgd-t': 4.0, 'fab-t': 4.0,
        'square': 0.5}
  share = aa_profile.shares(ms)
  assert [share[a]['passes_ms'] for a in aa_profile.ATTACKS] == [2.0, 2.0, 3.0, 1.0]
  assert [share[a]['share'] for a in aa_profile.ATTACKS] == [0.8, 0.5, 0.75, 1.0]
  row = {'ours_time_s': {'apgd-ce': 10.0, 'apgd-t': 20.0, 'fab-t': 40.0, 'square': 30.0},
         'official_s': 200.0}
  assert aa_profile.floor(row, share) == (8.0 + 10.0 + 30.0 + 30.0, 78.0 / 200.0)
