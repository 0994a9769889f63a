"""examples/bring_your_own_model.py end to end, at a size CI affords."""

import json
import os
import subprocess
import sys

from agkd_tf import evaluation
from tests.conftest import REPO


def test_bring_your_own_model_runs_end_to_end(shared_cifar, tmp_path):
  env = dict(os.environ)
  env.pop('AGKD_TF_VERBOSE_IMPORT', None)
  args = [sys.executable, os.path.join(REPO, 'examples', 'bring_your_own_model.py'),
          f'--data={shared_cifar}', '--train_examples=300', '--test_examples=20',
          '--aa_examples=10', '--natural_epochs=1', '--defence_examples=128',
          '--defence_epochs=1', '--attack_steps=1', '--batch_size=64', '--nomasking_checks',
          f'--output_dir={tmp_path / "run"}', f'--results_dir={tmp_path / "results"}']
  proc = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(tmp_path / 'results' / 'bring_your_own_model.json') as f:
    results = json.load(f)
  assert [r['model'] for r in results['rows']] == ['natural', 'agkd_bml']
  for row in results['rows']:
    assert all(0 <= row[k] <= 100 for k in ('clean', 'pgd20', 'aa')), row
    assert row['aa_examples'] == 10 and row['train_seconds'] > 0
  assert 'examples/bring_your_own_model.py' in results['command']
  assert (tmp_path / 'results' / 'bring_your_own_model.md').read_text().count('| agkd_bml |') == 1
  # The export is a SavedModel the evaluator reads.
  model = evaluation.load_model(saved_model=str(tmp_path / 'run' / 'agkd_bml_savedmodel'))
  assert model.num_classes == 10
