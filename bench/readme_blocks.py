r"""Writes the README's Speed and GPU tables from the results files, without rerunning anything.

  python bench/readme_blocks.py            # rewrite the blocks from bench/results/*.json
  python bench/readme_blocks.py --check    # exit 1 if a block differs from its results file

Each benchmark writes its JSON (`agkd_throughput.py`, `train_throughput.py`, `speed.py`,
`onednn.py`, `gpu_reference_torch.py`, `bf16_profile.py`); this
script turns those files into the README blocks between `<!-- NAME:begin -->` and
`<!-- NAME:end -->`, so every figure in them is one a script measured, with the command that
measured it. tests/test_bench_figures.py runs `--check`.
"""

import json
import os
import re
import sys

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import common  # pylint: disable=g-import-not-at-top,wrong-import-position

flags.DEFINE_bool('check', False, 'Compare the README blocks with the results instead of '
                  'writing them; exit 1 on a difference.')
FLAGS = flags.FLAGS


def _load(name):
  with open(os.path.join(common.RESULTS, f'{name}.json')) as f:
    return json.load(f)


def _machine(result):
  m = result['machine']
  features = m.get('cpu_features')
  return f'{m["cpu"]}{" (" + ", ".join(features) + ")" if features else ""}, {m["cores"]} cores'


def agkd_throughput_lines(result):
  """AGKD-BML's cost per image relative to AT-7 (bench/agkd_throughput.py)."""
  lines = ['| benchmark | figure | command |', '|---|---|---|']
  rounds = re.search(r'--rounds=(\d+)', result['command'])
  for i, r in enumerate(result['rows']):
    what = (f'AGKD-BML (K=2) training cost per image relative to AT-7, {r["model"]}, batch '
            f'{r["batch"]}' if i == 0 else f'the same, {r["model"]}')
    figure = (f'{r["cost_ratio_median"]:.2f}x median ({r["cost_ratio_min"]:.2f}-'
              f'{r["cost_ratio_max"]:.2f} over {rounds.group(1) if rounds else "2"} alternating rounds; '
              f'{r["agkd_img_per_s"]:.1f} vs {r["at_img_per_s"]:.1f} img/s); goal '
              f'{r["goal"]} {"met" if r["cost_ratio_median"] <= 1.05 else "not met"}; '
              f'{_machine(result)}, {result["date"]}')
    how = f'`{result["command"]}`' if i == 0 else 'the same command'
    lines.append(f'| {what} | {figure} | {how} |')
  return lines


def train_throughput_lines(result):
  """Our training loop against `model.fit` of the same network (bench/train_throughput.py)."""
  lines = ['| what | figure | command |', '|---|---|---|']
  rounds = re.search(r'--rounds=(\d+)', result['command'])
  for i, r in enumerate(result['rows']):
    what = (f'natural-training throughput, our loop / `model.fit` of the same network, '
            f'{r["model"]} (batch {r["batch"]})' if i == 0 else f'the same, {r["model"]}')
    figure = (f'{r["ratio_median"]:.2f}x median ({r["ratio_min"]:.2f}-{r["ratio_max"]:.2f} over '
              f'{rounds.group(1) if rounds else "?"} rounds; {r["ours_img_per_s"]:.0f} vs '
              f'{r["fit_img_per_s"]:.0f} img/s); {_machine(result)}, {result["date"]}')
    lines.append(f'| {what} | {figure} | `{result["command"]}` |')
  return lines


def speed_lines(result):
  """The ratios of `bench/speed.py`, with each workload's fraction of the float32 peak."""
  peak = next(r for r in result['rows'] if r['measure'].startswith('peak'))
  lines = [f'All ratios in one short run of `{result["command"]}` ({_machine(result)}, '
           f'{result["date"]}): each workload\'s fraction of this machine\'s float32 peak (a '
           f'2048^2 matmul, {peak["ours"]:.1f} GFLOP/s; {result["forward_flops"] / 1e6:.1f} '
           'MFLOPs per cnn-cpu image forward from TensorFlow\'s profiler, times the pass count '
           'of each workload).', '',
           '| measure (cnn-cpu) | ratio | fraction of peak |', '|---|---|---|']
  for r in result['rows']:
    if r is peak:
      continue
    if r['ratio'] is None:
      figure = f'{r["ours"]:.0f} {r["unit"]}'
    else:
      figure = f'{r["ratio"]:.2f}x ({r["ours"]:.1f} vs {r["baseline"]:.1f} {r["unit"]})'
    fraction = f'{r["peak_fraction"]:.2f}' if r.get('peak_fraction') is not None else '-'
    lines.append(f'| {r["measure"]} | {figure} | {fraction} |')
  return lines


def gpu_reference_lines(eager, compiled):
  """The official framework's WRN-28-10 steps on the lent GPU (bench/gpu_reference_torch.py)."""
  lines = [f'| WRN-28-10, batch {eager["meta"]["batch_size"]} | img/s | s per CIFAR-10 epoch | '
           'paper, V100 | GFLOP/img (counted) | fraction of the measured bf16 peak |',
           '|---|---|---|---|---|---|']
  for result, how in ((eager, 'eager'), (compiled, '`torch.compile` networks')):
    peak = result['meta']['bf16_matmul_peak_tflops']
    for i, r in enumerate(result['rows']):
      of = f' (of {peak:.0f} TFLOP/s)' if i == 0 else ''
      lines.append(f'| {r["method"]}, {how} | {r["img_per_s"]:.0f} | {r["epoch_s"]:.1f} | '
                   f'{r["paper_v100_epoch_s"]:.0f} s | {r["gflop_per_image"]:.1f} | '
                   f'{r["fraction_of_peak"]:.2f}{of} |')
  device = eager['meta']
  lines += ['', f'{device["device"]}, PyTorch {device["torch"]}; commands: '
            f'`{device["command"]}` and `{compiled["meta"]["command"]}`.', '']
  # What the table says about the goal of 30 s per AGKD-BML epoch (50,000 images) on an H100,
  # whose tensor cores are the H200's.
  agkd = {how: next(r for r in res['rows'] if r['method'].startswith('AGKD'))
          for how, res in (('eager', eager), ('compiled', compiled))}
  at = {how: next(r for r in res['rows'] if r['method'].startswith('AT'))
        for how, res in (('eager', eager), ('compiled', compiled))}
  goal_tflops = 50000 * agkd['eager']['gflop_per_image'] / 30 / 1000
  peak = device['bf16_matmul_peak_tflops']
  fractions = [r['fraction_of_peak'] for res in (eager, compiled) for r in res['rows']]
  lines.append(
      f'Our goal of 30 s per AGKD-BML epoch on an H100 means {goal_tflops:.0f} TFLOP/s sustained '
      f'(50,000 images x {agkd["eager"]["gflop_per_image"]:.1f} GFLOP in 30 s): '
      f'{100 * goal_tflops / peak:.0f}% of the peak measured here. PyTorch reaches '
      f'{100 * min(fractions):.0f} to {100 * max(fractions):.0f}%, and compiling the networks '
      f'changes AGKD-BML\'s throughput by {agkd["compiled"]["img_per_s"] / agkd["eager"]["img_per_s"]:.2f}x. '
      f'AGKD-BML costs {at["eager"]["img_per_s"] / agkd["eager"]["img_per_s"]:.2f}x AT-7\'s time '
      f'per image eager and {at["compiled"]["img_per_s"] / agkd["compiled"]["img_per_s"]:.2f}x '
      f'compiled (paper: {agkd["eager"]["paper_v100_epoch_s"]:.0f} / '
      f'{at["eager"]["paper_v100_epoch_s"]:.0f} = '
      f'{agkd["eager"]["paper_v100_epoch_s"] / at["eager"]["paper_v100_epoch_s"]:.2f}), for '
      f'{agkd["eager"]["gflop_per_image"] / at["eager"]["gflop_per_image"]:.2f}x the FLOPs.')
  return lines


def onednn_lines(result):
  """oneDNN kernels on / off (bench/onednn.py): what `import agkd_tf` turning them on is worth."""
  lines = ['| model | PGD-10 | AGKD-BML K=2 step | AT-10 step | max logit difference |',
           '|---|---|---|---|---|']
  for r in result['rows']:
    cells = []
    for w in ('pgd10', 'agkd_bml_k2_step', 'at10_step'):
      cells.append(f'{r[w + "_ratio"]:.2f}x ({r[w + "_on"]:.1f} vs {r[w + "_off"]:.1f} img/s)'
                   if w + '_ratio' in r else '-')
    lines.append(f'| {r["model"]} | ' + ' | '.join(cells) + f' | {r["max_logit_diff"]} |')
  lines += ['', f'oneDNN on / off, img/s, median of {result["rows"][0]["rounds"]} alternating '
            f'rounds of one process per setting; {_machine(result)}, {result["date"]}; '
            f'`{result["command"]}`.']
  return lines


def bf16_profile_lines(result):
  """Where PGD-20's time goes in float32 and with bfloat16 passes (bench/bf16_profile.py)."""
  lines = ['| model | convolutions, share of float32 busy time | convolution kernels fp32 / bf16 | '
           'the rest fp32 / bf16 (bf16 casts) | busy time fp32 / bf16 | wall time fp32 / bf16 | '
           'busy share of wall x cores, fp32 / bf16 |', '|---|---|---|---|---|---|---|']
  for r in result['rows']:
    lines.append(
        f'| {r["model"]} | {r["conv_share_fp32"]:.1f}% | {r["conv_speedup"]:.2f}x | '
        f'{r["rest_speedup"]:.2f}x ({r["cast_ms_bf16"]:.0f} of {r["rest_ms_bf16"]:.0f} ms) | '
        f'{r["busy_speedup"]:.2f}x | {r["wall_speedup"]:.2f}x | '
        f'{r["busy_share_fp32"]:.0f}% / {r["busy_share_bf16"]:.0f}% |')
  lines += ['', f'PGD-20 as one tf.while_loop, self time per op type from TensorFlow\'s profiler; '
            f'{_machine(result)}, {result["date"]}; `{result["command"]}`.']
  return lines


def blocks():
  return {
      'bf16_profile': bf16_profile_lines(_load('bf16_profile')),
      'agkd_throughput': agkd_throughput_lines(_load('agkd_throughput')),
      'train_throughput': train_throughput_lines(_load('train_throughput')),
      'speed': speed_lines(_load('speed')),
      'onednn': onednn_lines(_load('onednn')),
      'gpu_torch_reference': gpu_reference_lines(_load('gpu_torch_reference'),
                                                 _load('gpu_torch_reference_compiled')),
  }


def main(argv):
  del argv
  stale = []
  for name, lines in blocks().items():
    if FLAGS.check:
      if common.readme_block_text(name) != '\n'.join(lines):
        stale.append(name)
    else:
      common.readme_block(name, lines)
  if stale:
    print(f'README blocks differ from their results: {", ".join(stale)}; run '
          'python bench/readme_blocks.py')
    sys.exit(1)


if __name__ == '__main__':
  app.run(main)
