r"""A PyTorch reference for `bench/gpu_throughput.py`: AGKD-BML (K = 2) and AT-7 on WRN-28-10.

Wang et al., ICCV 2021 (AGKD-BML), supplementary Table 4 times the official PyTorch code on a
V100: 528 s per CIFAR-10 epoch for AGKD-BML with K = 2, 502 s for AT with PGD-7. This script is
**not part of the package** (agkd_tf never depends on torch) and does not measure it. It measures
what the paper's own framework does with the same two training steps on whatever GPU it runs on,
so that a lent accelerator without TensorFlow still tells us what the hardware allows, and what
fraction of the bf16 matmul peak such a step reaches.

The steps follow `docs/algorithms.md` pass for pass, since the pass count is what
decides the cost:
- AT-7: untargeted PGD-7 (step 2/255, random start, BN eval), then CE on x' in BN train.
- AGKD-BML, K = 2: most-confusing label (BN eval); targeted PGD-2 from x1 toward y_mc and from a
  random bank image x2 of class y_mc toward y1; one BN-train student pass on [x1', x1, x2'] and one
  BN-eval teacher pass on [x1, x2]; LSCE(0.5) + MART + channel-sum attention L1 + angular triplet.

Synthetic CIFAR-shaped data on the device (speed does not depend on the pixels), bfloat16 autocast,
channels-last, cuDNN autotuning; eager, or with `--compile` the networks under torch.compile (the
PGD loops and the update stay eager around them). FLOPs per image come from
`torch.utils.flop_counter` on one step of each method; the peak from an 8192^3 bf16 matmul in the
same process.

  python3 bench/gpu_reference_torch.py --out=/tmp/ref        # on a GPU, about 2 minutes
  python3 bench/gpu_reference_torch.py --out=/tmp/ref --compile   # plus compilation time
  python3 bench/gpu_reference_torch.py --out=/tmp/ref --batch_size=4 --widen=1 --seconds=1 \
      --peak_size=512                                          # the CPU smoke run

The Markdown is a function of the JSON alone, so it can be rewritten where there is no GPU (and no
torch), e.g. after the format changes; the measuring command stays the one the JSON records:

  python3 bench/gpu_reference_torch.py --render=bench/results/gpu_torch_reference.json
"""

import json
import os
import platform
import statistics
import sys
import time
import types

from absl import app
from absl import flags
try:
  import torch
  from torch import nn
  from torch.nn import functional as F
  from torch.utils import flop_counter
except ImportError:
  # --render reads only the JSON, so it runs where torch is not installed; the stand-in lets the
  # network classes below be defined, and main() refuses to measure without torch.
  torch = F = flop_counter = None
  nn = types.SimpleNamespace(Module=object)

flags.DEFINE_string('out', None, 'Folder for gpu_torch_reference.{md,json}.')
flags.DEFINE_string('render', None, 'Rewrite the Markdown beside this gpu_torch_reference*.json '
                    'from the JSON alone (no torch, no measurement).')
flags.mark_flags_as_mutual_exclusive(['out', 'render'], required=True)
flags.DEFINE_integer('batch_size', 128, 'Training batch (the paper\'s 128).')
flags.DEFINE_integer('depth', 28, 'WRN depth.')
flags.DEFINE_integer('widen', 10, 'WRN widening factor.')
flags.DEFINE_float('seconds', 20.0, 'Timed seconds per method and round.')
flags.DEFINE_integer('rounds', 2, 'Alternating rounds.')
flags.DEFINE_integer('peak_size', 8192, 'Side of the square bf16 matmul that measures the peak.')
flags.DEFINE_bool('compile', False, 'torch.compile the networks (the steps stay eager around them).')
FLAGS = flags.FLAGS

EPS, STEP = 8 / 255, 2 / 255
PAPER_V100_SECONDS = {'AGKD-BML K=2': 528.0, 'AT-7': 502.0}
EPOCH_IMAGES = 50000


class Block(nn.Module):
  """The official WRN's pre-activation basic block."""

  def __init__(self, cin, cout, stride):
    super().__init__()
    self.bn1, self.bn2 = nn.BatchNorm2d(cin), nn.BatchNorm2d(cout)
    self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
    self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
    self.short = (nn.Conv2d(cin, cout, 1, stride, bias=False)
                  if cin != cout or stride != 1 else None)

  def forward(self, x):
    o = F.relu(self.bn1(x))
    y = self.conv2(F.relu(self.bn2(self.conv1(o))))
    return y + (self.short(o) if self.short is not None else x)


class WideResNet(nn.Module):
  """WRN-depth-widen; returns (logits, embedding, last feature map) as the package's networks."""

  def __init__(self, depth, widen, num_classes=10):
    super().__init__()
    n = (depth - 4) // 6
    widths = [16, 16 * widen, 32 * widen, 64 * widen]
    layers = [nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)]
    for g in range(3):
      for i in range(n):
        layers.append(Block(widths[g] if i == 0 else widths[g + 1], widths[g + 1],
                            (1 if g == 0 else 2) if i == 0 else 1))
    self.body = nn.Sequential(*layers)
    self.bn = nn.BatchNorm2d(widths[3])
    self.fc = nn.Linear(widths[3], num_classes)

  def forward(self, x):
    fmap = F.relu(self.bn(self.body(x)))
    emb = fmap.mean((2, 3))
    return self.fc(emb), emb, fmap


def pgd(model, x, y, steps, targeted):
  """L-inf PGD on CE from a uniform start, BN eval; gradients w.r.t. the input only."""
  delta = (torch.rand_like(x) * 2 - 1) * EPS
  sign = -1.0 if targeted else 1.0
  for _ in range(steps):
    delta.requires_grad_(True)
    with torch.autocast(x.device.type, torch.bfloat16):
      loss = F.cross_entropy(model(x + delta)[0].float(), y)
    grad, = torch.autograd.grad(loss, delta)
    delta = (delta.detach() + sign * STEP * grad.sign()).clamp(-EPS, EPS)
    delta = (x + delta).clamp(0, 1) - x
  return (x + delta).detach()


def attention(fmap):
  """Channel sum, then per-example min-max normalisation (the AGKD attention)."""
  a = fmap.float().sum(1).flatten(1)
  a = a - a.min(1, keepdim=True).values
  return a / a.max(1, keepdim=True).values.clamp_min(1e-12)


def agkd_loss(logits_adv, logits_clean, emb, fmap, f_teacher, y1, b):
  """LSCE(0.5) + MART(beta 6) + two attention L1 terms + 2 * angular triplet (float32)."""
  k = logits_adv.shape[1]
  target = torch.full_like(logits_adv, 0.5 / (k - 1)).scatter_(1, y1[:, None], 0.5)
  lsce = -(target * F.log_softmax(logits_adv, 1)).sum(1).mean()
  p_adv, p_clean = F.softmax(logits_adv, 1), F.softmax(logits_clean, 1)
  top2 = p_adv.topk(2, 1).indices
  y_wrong = torch.where(top2[:, 0] == y1, top2[:, 1], top2[:, 0])
  bce = -torch.log(1.0001 - p_adv.gather(1, y_wrong[:, None]) + 1e-12).mean()
  kl = (p_clean * (torch.log(p_clean + 1e-12) - torch.log(p_adv + 1e-12))).sum(1)
  mart = bce + 6 * (kl * (1.0000001 - p_clean.gather(1, y1[:, None])[:, 0])).mean()
  attn = ((attention(fmap[:b]) - attention(f_teacher[:b])).abs().mean()
          + (attention(fmap[2 * b:]) - attention(f_teacher[b:])).abs().mean())
  ea, ep, en = emb[:b], emb[b:2 * b], emb[2 * b:]
  dist = lambda u, v: 1 - F.cosine_similarity(u, v).clamp(max=1).abs()
  triplet = (F.relu(0.03 + dist(ea, ep) - dist(ea, en)).mean()
             + 0.001 * (ea.pow(2).mean() + ep.pow(2).mean() + en.pow(2).mean()))
  return lsce + mart + attn + 2 * triplet


def make_steps(device, compiled):
  """{method: step()} on one shared student (and a frozen teacher) and synthetic data."""
  def net():
    return WideResNet(FLAGS.depth, FLAGS.widen).to(device, memory_format=torch.channels_last)
  student, teacher = net(), net().eval()
  for p in teacher.parameters():
    p.requires_grad_(False)
  # Static shapes: each batch size (B, 2B, 3B) and BN mode gets its own specialised graph.
  fwd = torch.compile(student, dynamic=False) if compiled else student
  fwd_teacher = torch.compile(teacher, dynamic=False) if compiled else teacher
  opt = torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9, weight_decay=2e-4)
  b = FLAGS.batch_size
  gen = torch.Generator(device).manual_seed(0)
  x1 = torch.rand(b, 3, 32, 32, device=device, generator=gen).contiguous(
      memory_format=torch.channels_last)
  y1 = torch.randint(0, 10, (b,), device=device, generator=gen)
  bank = torch.rand(10, 100, 3, 32, 32, device=device, generator=gen)  # [class, image, ...]

  def update(loss):
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss

  def at_step():
    student.eval()
    x_adv = pgd(fwd, x1, y1, 7, targeted=False)
    student.train()
    with torch.autocast(device.type, torch.bfloat16):
      return update(F.cross_entropy(fwd(x_adv)[0].float(), y1))

  def agkd_step():
    student.eval()
    with torch.no_grad(), torch.autocast(device.type, torch.bfloat16):
      logits = fwd(x1)[0].float()
    y_mc = logits.scatter(1, y1[:, None], -float('inf')).argmax(1)
    x1_adv = pgd(fwd, x1, y_mc, 2, targeted=True)
    x2 = bank[y_mc, torch.randint(0, bank.shape[1], (b,), device=device)].contiguous(
        memory_format=torch.channels_last)  # One gather: no loop over the batch.
    x2_adv = pgd(fwd, x2, y1, 2, targeted=True)
    student.train()
    with torch.autocast(device.type, torch.bfloat16):
      with torch.no_grad():
        f_teacher = fwd_teacher(torch.cat([x1, x2]))[2]
      logits, emb, fmap = fwd(torch.cat([x1_adv, x1, x2_adv]))
      loss = agkd_loss(logits[:b].float(), logits[b:2 * b].float(), emb.float(), fmap,
                       f_teacher, y1, b)
    return update(loss)

  return {'AGKD-BML K=2': agkd_step, 'AT-7': at_step}


def flops_per_image(step):
  with flop_counter.FlopCounterMode(display=False) as counter:
    step()
  return counter.get_total_flops() / FLAGS.batch_size


def matmul_peak(device):
  n = FLAGS.peak_size
  a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
  bm = torch.randn(n, n, device=device, dtype=torch.bfloat16)
  for _ in range(3):
    a @ bm
  sync(device)
  reps, start = 10, time.perf_counter()
  for _ in range(reps):
    a @ bm
  sync(device)
  return 2 * n ** 3 * reps / (time.perf_counter() - start)


def sync(device):
  if device.type == 'cuda':
    torch.cuda.synchronize()


def markdown(result, source=None):
  """The Markdown of a result JSON ({'meta': ..., 'rows': ...}), from its figures alone.

  Args:
    result: the parsed JSON.
    source: the JSON's path when rendering a stored file; the Markdown then says it was rendered
      from it, and by which command. None when the measuring run writes both files.

  Returns:
    The Markdown text.
  """
  meta = result['meta']
  command = meta.get('command')
  if source is None:
    provenance = f'`{command}`'
  else:
    rendered = f'this file was rendered from it by `{" ".join(["python3"] + sys.argv)}`'
    provenance = (f'`{command}` (the command recorded in {os.path.basename(source)}; {rendered})'
                  if command else
                  f'The measuring command is not recorded in {os.path.basename(source)}; '
                  f'{rendered}.')
  # JSONs written before the --compile flag existed lack 'compiled'; their command then tells
  # (the flag defaults to eager).
  compiled = meta.get('compiled', None if command is None else '--compile' in command.split())
  mode = {True: 'torch.compile networks', False: 'eager', None: 'eager or compiled not recorded'}
  lines = [f'# PyTorch reference on {meta["device"]} (not the package; see '
           'bench/gpu_reference_torch.py)', '', provenance, '',
           f'{meta["model"]}, batch {meta["batch_size"]}, bf16 autocast, channels-last, '
           f'{mode[compiled]}, torch {meta["torch"]}; medians of {meta["rounds"]} alternating '
           f'rounds of {meta["seconds"]:.0f} s. Measured bf16 matmul peak '
           f'{meta["bf16_matmul_peak_tflops"]:.0f} TFLOP/s.', '',
           '| method | img/s | s per CIFAR-10 epoch | paper, V100 (s) | GFLOP/img | '
           'fraction of peak |', '|---|---|---|---|---|---|']
  lines += [f'| {r["method"]} | {r["img_per_s"]:.1f} | {r["epoch_s"]:.1f} | '
            f'{r["paper_v100_epoch_s"]:.0f} | {r["gflop_per_image"]:.1f} | '
            f'{r["fraction_of_peak"]:.3f} |' for r in result['rows']]
  return '\n'.join(lines) + '\n'


def render(json_path):
  """Rewrites the Markdown beside json_path (same stem, .md) from the JSON alone."""
  with open(json_path) as f:
    text = markdown(json.load(f), source=json_path)
  md_path = os.path.splitext(json_path)[0] + '.md'
  with open(md_path, 'w') as f:
    f.write(text)
  print(f'{md_path}: rendered from {json_path}')
  return md_path


def main(argv):
  del argv
  if FLAGS.render:
    render(FLAGS.render)
    return
  if torch is None:
    raise app.UsageError('measuring needs torch (only --render works without it)')
  device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
  torch.backends.cudnn.benchmark = True
  name = torch.cuda.get_device_name() if device.type == 'cuda' else f'CPU ({platform.machine()})'
  # FLOPs are counted on eager networks: the counter does not see inside compiled graphs.
  flops = {k: flops_per_image(s) for k, s in make_steps(device, False).items()}
  steps = make_steps(device, FLAGS.compile)
  for method, step in steps.items():  # Compilation and cuDNN autotuning stay outside the timing.
    start = time.perf_counter()
    for _ in range(3):
      step()
    sync(device)
    print(f'{method}: warm-up {time.perf_counter() - start:.1f} s', flush=True)
  speeds = {k: [] for k in steps}
  for r in range(FLAGS.rounds):
    for method in (list(steps) if r % 2 == 0 else list(steps)[::-1]):
      n, start = 0, time.perf_counter()
      while time.perf_counter() - start < FLAGS.seconds:
        steps[method]().item()  # Synchronises each step, as the TF script's float() does.
        n += 1
      speeds[method].append(n * FLAGS.batch_size / (time.perf_counter() - start))
    print(f'round {r}: ' + ', '.join(f'{k} {v[-1]:.1f} img/s' for k, v in speeds.items()),
          flush=True)
  peak = matmul_peak(device)
  rows = []
  for method in steps:
    ips = statistics.median(speeds[method])
    rows.append({'method': method, 'img_per_s': ips, 'epoch_s': EPOCH_IMAGES / ips,
                 'paper_v100_epoch_s': PAPER_V100_SECONDS[method],
                 'gflop_per_image': flops[method] / 1e9,
                 'fraction_of_peak': ips * flops[method] / peak})
  meta = {'device': name, 'torch': torch.__version__, 'model': f'wrn-{FLAGS.depth}-{FLAGS.widen}',
          'batch_size': FLAGS.batch_size, 'seconds': FLAGS.seconds, 'rounds': FLAGS.rounds,
          'compiled': FLAGS.compile,
          'bf16_matmul_peak_tflops': peak / 1e12, 'command': ' '.join(['python3'] + sys.argv)}
  os.makedirs(FLAGS.out, exist_ok=True)
  stem = 'gpu_torch_reference' + ('_compiled' if FLAGS.compile else '')
  result = {'meta': meta, 'rows': rows}
  with open(os.path.join(FLAGS.out, stem + '.json'), 'w') as f:
    json.dump(result, f, indent=2)
  # The same function as --render, so a stored JSON always renders to the Markdown it came with.
  text = markdown(result)
  with open(os.path.join(FLAGS.out, stem + '.md'), 'w') as f:
    f.write(text)
  print(text, end='')


if __name__ == '__main__':
  app.run(main)
