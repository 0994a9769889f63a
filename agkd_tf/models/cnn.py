"""cnn-cpu: a small, fast CNN for CPU runs (ours; not from the paper).

Three stages of two 3x3 conv-BN-ReLU with 32, 64 and 128 filters, max-pooling after the first two
stages, so a 32x32 input ends in an 8x8x128 feature map; then global average pooling and a dense
layer. About 0.29M parameters and 39M multiply-adds per 32x32 image.
"""

from keras import layers

from agkd_tf.models import common


def cnn_cpu(inputs, x, num_classes, sync_bn=False):
  b = common.Builder(sync_bn)
  for stage, filters in enumerate((32, 64, 128)):
    for _ in range(2):
      x = b.bn_relu(b.conv(x, filters))
    if stage < 2:
      x = layers.MaxPooling2D(2)(x)
  return common.finish(inputs, x, num_classes, 'cnn_cpu')


