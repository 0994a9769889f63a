"""Generated figures: every figure in README.md and bench/results comes from a results file.

The eps plot of the robustness table must tell every row apart; the PyTorch reference's Markdown
must be a function of its JSON (renderable without torch, so without a GPU); the README's Speed
and GPU tables are their JSON rendered (bench/readme_blocks.py); the README's single
training runs must be read from the runs' result.json, with the command rebuilt from flags.json.
"""

import json
import os
import shutil
import subprocess
import sys

from tests.conftest import REPO
from tests.conftest import run_binary

sys.path.insert(0, REPO)

# pylint: disable=g-import-not-at-top,wrong-import-position
from bench import readme_runs
from bench import robustness_cpu
# pylint: enable=g-import-not-at-top,wrong-import-position

_RESULTS = os.path.join(REPO, 'bench', 'results')
_GPU_SCRIPT = os.path.join(REPO, 'bench', 'gpu_reference_torch.py')


def _sweep(base):
  return {f'{e / 255:.6f}': max(base - 3 * e, 0.0) for e in (2, 4, 8, 16)}


def test_eps_plot_gives_every_row_its_own_colour_and_marker(tmp_path):
  # More rows than tab20 has colours, so the colour alone would repeat; a row without a sweep
  # (evaluated before the sweep existed) is left out rather than drawn empty.
  rows = [{'method': f'method {i}', 'row': f'r{i}', 'eps_sweep': _sweep(50 - i)}
          for i in range(23)]
  rows.append({'method': 'no sweep', 'row': 'x', 'eps_sweep': None})
  path = tmp_path / 'eps.png'
  drawn = robustness_cpu.eps_figure(rows, str(path))
  assert path.stat().st_size > 0
  assert [label for label, *_ in drawn] == [f'method {i}' for i in range(23)]
  styles = [(colour, marker) for _, colour, marker, _ in drawn]
  assert len(set(styles)) == len(styles), styles
  assert robustness_cpu.eps_figure([rows[-1]], str(tmp_path / 'none.png')) == []
  assert not (tmp_path / 'none.png').exists()


def test_plot_stage_redraws_the_committed_table_from_its_json_alone(tmp_path):
  results = tmp_path / 'results'
  results.mkdir()
  shutil.copyfile(os.path.join(_RESULTS, 'robustness_cpu.json'), results / 'table.json')
  with open(results / 'table.json') as f:
    rows = json.load(f)['rows']
  # No run directory exists: the figure can only come from the JSON.
  proc = subprocess.run(
      [sys.executable, os.path.join(REPO, 'bench', 'robustness_cpu.py'),
       f'--runs_dir={tmp_path / "no_runs"}', f'--results_dir={results}', '--name=table',
       '--stages=plot'], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert (results / 'table_eps.png').stat().st_size > 0
  assert f'{len(rows)} rows drawn' in proc.stdout
  drawn = robustness_cpu.eps_figure(rows, str(tmp_path / 'again.png'))
  assert len({(c, m) for _, c, m, _ in drawn}) == len(rows) >= 16
  # The paper's ablations are dashed, the main rows solid.
  dashed = {label for label, _, _, style in drawn if style == '--'}
  assert dashed == {r.name for r in robustness_cpu.ROWS if r.ablation}


def _gpu_script(*args):
  """Runs bench/gpu_reference_torch.py with torch unimportable, as on a machine without it."""
  code = ('import runpy, sys\n'
          'sys.modules["torch"] = None  # Any import of torch now raises ImportError.\n'
          f'sys.argv = ["bench/gpu_reference_torch.py", *{list(args)!r}]\n'
          'runpy.run_path(sys.argv[0], run_name="__main__")\n')
  return subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True, text=True,
                        timeout=120)


def _gpu_result(command, **meta):
  return {'meta': {'device': 'Test GPU', 'torch': '9.9', 'model': 'wrn-28-10', 'batch_size': 128,
                   'seconds': 20.0, 'rounds': 2, 'bf16_matmul_peak_tflops': 500.4,
                   **({'command': command} if command else {}), **meta},
          'rows': [{'method': 'AGKD-BML K=2', 'img_per_s': 1000.04, 'epoch_s': 49.99,
                    'paper_v100_epoch_s': 528.0, 'gflop_per_image': 209.73,
                    'fraction_of_peak': 0.41917}]}


def test_gpu_reference_markdown_renders_from_its_json_without_torch(tmp_path):
  path = tmp_path / 'gpu_torch_reference_compiled.json'
  path.write_text(json.dumps(_gpu_result('python3 bench/gpu_reference_torch.py --out=/o '
                                         '--compile')))  # No 'compiled' key: an older JSON.
  proc = _gpu_script(f'--render={path}')
  assert proc.returncode == 0, proc.stdout + proc.stderr
  lines = (tmp_path / 'gpu_torch_reference_compiled.md').read_text().splitlines()
  assert lines[0] == ('# PyTorch reference on Test GPU (not the package; see '
                      'bench/gpu_reference_torch.py)')
  assert lines[2].startswith('`python3 bench/gpu_reference_torch.py --out=/o --compile` (the '
                             'command recorded in gpu_torch_reference_compiled.json;')
  assert f'--render={path}' in lines[2]
  assert lines[4] == ('wrn-28-10, batch 128, bf16 autocast, channels-last, torch.compile '
                      'networks, torch 9.9; medians of 2 alternating rounds of 20 s. Measured '
                      'bf16 matmul peak 500 TFLOP/s.')
  assert lines[-1] == '| AGKD-BML K=2 | 1000.0 | 50.0 | 528 | 209.7 | 0.419 |'

  # Without a recorded command the Markdown says so and invents none; 'compiled' wins when set.
  path.write_text(json.dumps(_gpu_result(None, compiled=False)))
  proc = _gpu_script(f'--render={path}')
  assert proc.returncode == 0, proc.stdout + proc.stderr
  text = (tmp_path / 'gpu_torch_reference_compiled.md').read_text()
  assert 'The measuring command is not recorded in gpu_torch_reference_compiled.json' in text
  assert ', eager, torch 9.9' in text and '--out' not in text

  # Measuring does need torch, and says so instead of failing on an import.
  proc = _gpu_script(f'--out={tmp_path / "out"}')
  assert proc.returncode != 0 and 'measuring needs torch' in proc.stderr


def test_committed_gpu_reference_markdown_is_its_json_rendered(tmp_path):
  # A hand edit of a committed Markdown (a figure, a rewritten command) makes it differ from
  # what its JSON renders to. The copy renders in tmp_path, so its command names that path.
  for stem in ('gpu_torch_reference', 'gpu_torch_reference_compiled'):
    shutil.copyfile(os.path.join(_RESULTS, stem + '.json'), tmp_path / (stem + '.json'))
    proc = _gpu_script(f'--render={tmp_path / (stem + ".json")}')
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rendered = (tmp_path / (stem + '.md')).read_text().replace(
        str(tmp_path), os.path.join('bench', 'results'))
    with open(os.path.join(_RESULTS, stem + '.md')) as f:
      assert f.read() == rendered, stem


def test_duration_reads_like_the_readme():
  assert readme_runs.duration(2465) == '41 min 05 s'
  assert readme_runs.duration(161.4) == '2 min 41 s'
  assert readme_runs.duration(59) == '59 s'
  assert readme_runs.duration(3723) == '1 h 02 min 03 s'


def _readme(tmp_path):
  readme = tmp_path / 'README.md'
  readme.write_text('intro\n<!-- readme_runs:begin (written by x) -->\n| typed | 83.72% |\n'
                    '<!-- readme_runs:end -->\noutro\n')
  return readme


def _readme_runs(tmp_path, *args):
  env = dict(os.environ, AGKD_BENCH_RESULTS=str(tmp_path / 'results'))
  return subprocess.run(
      [sys.executable, os.path.join(REPO, 'bench', 'readme_runs.py'),
       f'--readme_path={tmp_path / "README.md"}', *args],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_readme_runs_writes_the_row_of_a_finished_run(tmp_path):
  run = tmp_path / 'quickstart'
  run.mkdir()
  (run / 'result.json').write_text(json.dumps(
      {'dataset': 'folder:../shared/data/cifar10-jpeg', 'model': 'cnn-cpu', 'method': 'natural',
       'epochs': 4, 'steps': 156, 'train_examples': 5000, 'test_examples': 1000,
       'clean_accuracy': 0.4951, 'images_per_sec': 120.0, 'wall_seconds': 161.4,
       'start_step': 0}))
  # As the flagfile gives, except the dataset, the seed (a flag it does not set) and lr (set
  # to something else); lists and floats as flags.json holds them.
  (run / 'flags.json').write_text(json.dumps(
      {'model_dir': '/x/quickstart', 'dataset': 'folder:../shared/data/cifar10-jpeg',
       'model': 'cnn-cpu', 'method': 'natural', 'epochs': 4, 'lr': 0.2, 'weight_decay': 0.0005,
       'nesterov': True, 'lr_decay_epochs': [100, 150], 'eps': 8 / 255, 'seed': 3}))
  readme = _readme(tmp_path)
  proc = _readme_runs(tmp_path, f'--quickstart={run}', f'--natural_cpu={tmp_path / "absent"}')
  assert proc.returncode == 0, proc.stdout + proc.stderr
  command = ('python -m agkd_tf.train --flagfile=flags/quickstart.cfg '
             '--dataset=folder:../shared/data/cifar10-jpeg --lr=0.2 --seed=3 '
             '--model_dir=/x/quickstart')
  text = readme.read_text()
  assert text.startswith('intro\n<!-- readme_runs:begin (written by x) -->\n')
  assert text.endswith('<!-- readme_runs:end -->\noutro\n')
  assert '83.72' not in text
  assert ('| quickstart: cnn-cpu, natural training on 5,000 images of '
          '`folder:../shared/data/cifar10-jpeg`, 4 epochs; clean accuracy on 1,000 test images '
          f'| 49.51% in 2 min 41 s | `{command}` |') in text
  # The unfinished run: its command, no figure.
  assert ('Not yet regenerated by this script: natural cnn-cpu, the CPU teacher (UM row): '
          '`python -m agkd_tf.train --flagfile=flags/cifar10_natural_cpu.cfg '
          '--model_dir=runs/natural_cpu`.') in text
  result = json.loads((tmp_path / 'results' / 'readme_runs.json').read_text())
  assert result['command'].startswith('python bench/readme_runs.py --readme_path=')
  assert f'Written by `{result["command"]}` from the runs\' result.json on {result["date"]}' in text
  assert result['machine']['cores'] == os.cpu_count()
  [row] = result['rows']
  assert row['clean_accuracy'] == 49.51 and row['wall_seconds'] == 161.4
  assert row['command'] == command
  assert [p['key'] for p in result['pending']] == ['natural_cpu']
  assert '| 49.51% in 2 min 41 s |' in (tmp_path / 'results' / 'readme_runs.md').read_text()


def test_readme_runs_reads_what_training_writes(tmp_path):
  # A real (tiny) run of the quickstart flagfile: train_lib must record the wall time, and the
  # command rebuilt from flags.json must hold exactly the flags given beside the flagfile.
  given = ['--dataset=synthetic:8', '--train_examples=64', '--test_examples=32', '--epochs=1',
           '--batch_size=32', '--eval_examples=32', '--eval_attack_steps=0', '--export=false',
           '--verbose=0']
  run = tmp_path / 'run'
  proc = run_binary('train', '--flagfile=flags/quickstart.cfg', *given, f'--model_dir={run}')
  assert proc.returncode == 0, proc.stdout + proc.stderr
  result = json.loads((run / 'result.json').read_text())
  assert result['wall_seconds'] > 0 and result['start_step'] == 0
  _readme(tmp_path)
  proc = _readme_runs(tmp_path, f'--quickstart={run}')
  assert proc.returncode == 0, proc.stdout + proc.stderr
  [row] = json.loads((tmp_path / 'results' / 'readme_runs.json').read_text())['rows']
  parts = row['command'].split()
  assert parts[:4] == ['python', '-m', 'agkd_tf.train', '--flagfile=flags/quickstart.cfg']
  assert sorted(parts[4:]) == sorted(given + [f'--model_dir={run}'])
  assert row['figure'] == (f'{100 * result["clean_accuracy"]:.2f}% in '
                           f'{readme_runs.duration(result["wall_seconds"])}')


def test_readme_speed_and_gpu_blocks_are_their_results_rendered(tmp_path):
  from bench import readme_blocks  # pylint: disable=g-import-not-at-top
  from bench import common  # pylint: disable=g-import-not-at-top
  for name, lines in readme_blocks.blocks().items():
    assert common.readme_block_text(name) == '\n'.join(lines), name
  # A changed figure in the results would show: the check exits 1 on a stale block.
  readme = tmp_path / 'README.md'
  shutil.copy(os.path.join(REPO, 'README.md'), readme)
  text = readme.read_text()
  readme.write_text(text.replace('| AT-7, eager | 1405 |', '| AT-7, eager | 1406 |'))
  assert common.readme_block_text('gpu_torch_reference', str(readme)) != '\n'.join(
      readme_blocks.blocks()['gpu_torch_reference'])
  proc = subprocess.run([sys.executable, os.path.join(REPO, 'bench', 'readme_blocks.py'),
                         '--check'], capture_output=True, text=True, cwd=REPO, check=False)
  assert proc.returncode == 0, proc.stdout + proc.stderr
