"""Wide ResNets (Zagoruyko & Komodakis, 2016) as in the official PyTorch WRN that AGKD-BML,
TRADES and MART use (`wideresnet.py`).

Pre-activation basic blocks: BN-ReLU-conv3x3(stride)-BN-ReLU-conv3x3. When a block changes shape,
its shortcut is a 1x1 convolution applied to the *activated* input relu(bn1(x)), exactly as the
official code does (`convShortcut(x)` after `x = relu1(bn1(x))`); otherwise the shortcut is the
identity on x. The final BN + ReLU output is the feature map (8x8x640 for WRN-28-10 on CIFAR).
No dropout (the official adversarial runs use dropRate 0).
"""

from keras import layers

from agkd_tf.models import common


def _block(b, x, filters, stride):
  equal_in_out = x.shape[-1] == filters and stride == 1
  act = b.bn_relu(x)
  out = b.conv(act, filters, 3, stride)
  out = b.conv(b.bn_relu(out), filters, 3, 1)
  shortcut = x if equal_in_out else b.conv(act, filters, 1, stride)
  return layers.Add()([shortcut, out])


def wide_resnet(inputs, x, num_classes, depth, widen, sync_bn=False):
  if (depth - 4) % 6:
    raise ValueError(f'WRN depth must be 6n + 4, got {depth}')
  n = (depth - 4) // 6
  b = common.Builder(sync_bn)
  x = b.conv(x, 16, 3, 1)
  for group, (filters, stride) in enumerate(((16 * widen, 1), (32 * widen, 2), (64 * widen, 2))):
    for i in range(n):
      x = _block(b, x, filters, stride if i == 0 else 1)
    del group
  x = b.bn_relu(x)
  return common.finish(inputs, x, num_classes, f'wrn_{depth}_{widen}')
