"""ResNets: PreAct ResNet-18 (He et al., 2016; the Rice et al. / TRADES CIFAR version) and
ResNet-50 for 64x64 Tiny ImageNet inputs (as SML and AGKD-BML's Tiny ImageNet table use).

PreAct ResNet-18: a 3x3 stem, four stages of two pre-activation blocks (64, 128, 256, 512
filters), a 1x1 shortcut on the activated input when the shape changes, and a final BN + ReLU
that gives the feature map (4x4x512 on CIFAR).

ResNet-50: bottleneck blocks [3, 4, 6, 3] with expansion 4. For 64x64 inputs the ImageNet stem
(7x7 stride 2 plus max-pool) would leave a 2x2 final map, so we use a 3x3 stride-1 stem without
max-pool (the common Tiny ImageNet adaptation), giving an 8x8x2048 feature map.
"""

from keras import layers

from agkd_tf.models import common


def _preact_block(b, x, filters, stride):
  act = b.bn_relu(x)
  needs_proj = stride != 1 or x.shape[-1] != filters
  shortcut = b.conv(act, filters, 1, stride) if needs_proj else x
  out = b.conv(act, filters, 3, stride)
  out = b.conv(b.bn_relu(out), filters, 3, 1)
  return layers.Add()([shortcut, out])


def preact_resnet18(inputs, x, num_classes, sync_bn=False):
  b = common.Builder(sync_bn)
  x = b.conv(x, 64, 3, 1)
  for filters, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
    x = _preact_block(b, x, filters, stride)
    x = _preact_block(b, x, filters, 1)
  x = b.bn_relu(x)
  return common.finish(inputs, x, num_classes, 'preact_resnet18')


def _bottleneck(b, x, filters, stride):
  out_filters = filters * 4
  shortcut = x
  if stride != 1 or x.shape[-1] != out_filters:
    shortcut = b.bn()(b.conv(x, out_filters, 1, stride))
  out = b.bn_relu(b.conv(x, filters, 1, 1))
  out = b.bn_relu(b.conv(out, filters, 3, stride))
  out = b.bn()(b.conv(out, out_filters, 1, 1))
  return layers.ReLU()(layers.Add()([shortcut, out]))


def resnet50(inputs, x, num_classes, sync_bn=False):
  b = common.Builder(sync_bn)
  x = b.bn_relu(b.conv(x, 64, 3, 1))
  for filters, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
    for i in range(blocks):
      x = _bottleneck(b, x, filters, stride if i == 0 else 1)
  # The last bottleneck ends in BN + (residual add) + ReLU: that output is the feature map.
  return common.finish(inputs, x, num_classes, 'resnet50')
