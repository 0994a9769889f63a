"""VGG-16 with BatchNorm, CIFAR layout (Simonyan & Zisserman, 2015), the black-box source model.

Thirteen 3x3 conv-BN-ReLU layers in five stages (64, 128, 256, 512, 512) with max-pooling after
the first four; the fifth stage's output (2x2x512 on CIFAR), before its pooling, is the feature
map, whose global average pool feeds the classifier.
"""

from keras import layers

from agkd_tf.models import common

_STAGES = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))


def vgg16(inputs, x, num_classes, sync_bn=False):
  b = common.Builder(sync_bn)
  for stage, (filters, convs) in enumerate(_STAGES):
    for _ in range(convs):
      x = b.bn_relu(b.conv(x, filters))
    if stage < len(_STAGES) - 1:
      x = layers.MaxPooling2D(2)(x)
  return common.finish(inputs, x, num_classes, 'vgg16')
