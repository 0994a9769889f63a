"""SGD with PyTorch semantics and the epoch-based learning-rate schedules of the official recipes.

Every official implementation we reproduce trains with `torch.optim.SGD(lr, momentum=0.9,
weight_decay=w)`. Two details differ from `keras.optimizers.SGD`:

- PyTorch's weight decay is *coupled*: w * param is added to the gradient before momentum.
  Keras's `weight_decay` is decoupled (AdamW-style) and is not the same optimiser.
- PyTorch keeps the momentum buffer in gradient units (b = m b + g; p -= lr b), Keras in step
  units (v = m v - lr g). They agree while lr is constant but not across an lr decay.

`TorchSGD` implements the PyTorch update. It runs after the cross-replica gradient all-reduce
(Keras's TF optimizer sums replica gradients before `update_step`), so the decay term is added
exactly once whatever the number of replicas.
"""

import math

import keras
from keras import ops
import tensorflow as tf


@keras.saving.register_keras_serializable('agkd_tf')
class TorchSGD(keras.optimizers.Optimizer):
  """`torch.optim.SGD` with momentum, dampening 0 and coupled weight decay.

  Args:
    learning_rate: float or schedule.
    momentum: momentum factor.
    nesterov: Nesterov momentum, as PyTorch defines it.
    coupled_weight_decay: w of PyTorch's `weight_decay`.
    decay_variables: 'all' (PyTorch's default: every parameter, BN and biases included) or
      'kernels' (conv and dense kernels only, as Bilateral's official code does).
  """

  def __init__(self, learning_rate=0.1, momentum=0.9, nesterov=False, coupled_weight_decay=0.0,
               decay_variables='all', name='torch_sgd', **kwargs):
    super().__init__(learning_rate=learning_rate, name=name, **kwargs)
    if decay_variables not in ('all', 'kernels'):
      raise ValueError(f'decay_variables must be "all" or "kernels", got {decay_variables}')
    self.momentum = momentum
    self.nesterov = nesterov
    self.coupled_weight_decay = coupled_weight_decay
    self.decay_variables = decay_variables

  def build(self, variables):
    if self.built:
      return
    super().build(variables)
    self.momentums = [self.add_variable_from_reference(v, 'momentum') for v in variables]
    # Decided once by name, since update_step sees the raw tf.Variable.
    self._decays = [self.decay_variables == 'all' or v.path.endswith('kernel') for v in variables]

  def update_step(self, gradient, variable, learning_rate):
    i = self._get_variable_index(variable)
    lr = ops.cast(learning_rate, variable.dtype)
    g = ops.cast(gradient, variable.dtype)
    if self.coupled_weight_decay and self._decays[i]:
      g = g + ops.cast(self.coupled_weight_decay, variable.dtype) * variable
    buf = self.momentums[i]
    m = ops.cast(self.momentum, variable.dtype)
    self.assign(buf, buf * m + g)
    step = g + m * buf if self.nesterov else buf
    self.assign_sub(variable, lr * step)

  def get_config(self):
    return {**super().get_config(), 'momentum': self.momentum, 'nesterov': self.nesterov,
            'coupled_weight_decay': self.coupled_weight_decay,
            'decay_variables': self.decay_variables}


@keras.saving.register_keras_serializable('agkd_tf')
class EpochSchedule(keras.optimizers.schedules.LearningRateSchedule):
  """Learning rate as a function of the (fractional) epoch.

  - 'piecewise': lr * factor ** (number of decay epochs reached), changed at epoch boundaries
    like PyTorch's MultiStepLR.
  - 'cosine': half-cosine from lr to 0 over the run.
  - 'constant'.
  An optional linear warm-up from 0 precedes any of them.
  """

  def __init__(self, base_lr, steps_per_epoch, kind='piecewise', decay_epochs=(),
               decay_factor=0.1, warmup_epochs=0.0, total_epochs=1):
    if kind not in ('piecewise', 'cosine', 'constant'):
      raise ValueError(f'Unknown lr schedule "{kind}"')
    self.base_lr = float(base_lr)
    self.steps_per_epoch = int(steps_per_epoch)
    self.kind = kind
    self.decay_epochs = [int(e) for e in decay_epochs]
    self.decay_factor = float(decay_factor)
    self.warmup_epochs = float(warmup_epochs)
    self.total_epochs = int(total_epochs)

  def __call__(self, step):
    step = tf.cast(step, tf.float32)
    epoch = step / float(self.steps_per_epoch)
    if self.kind == 'piecewise':
      whole = tf.floor(epoch)
      reached = tf.add_n([tf.cast(whole >= e, tf.float32) for e in self.decay_epochs] +
                         [tf.constant(0.0)])
      lr = self.base_lr * tf.pow(self.decay_factor, reached)
    elif self.kind == 'cosine':
      span = max(self.total_epochs - self.warmup_epochs, 1e-8)
      frac = tf.clip_by_value((epoch - self.warmup_epochs) / span, 0.0, 1.0)
      lr = self.base_lr * 0.5 * (1.0 + tf.cos(math.pi * frac))
    else:
      lr = tf.constant(self.base_lr)
    if self.warmup_epochs > 0:
      # Warm-up reaches the base lr at the end of warm-up (step + 1 so step 0 is not lr 0).
      warm = tf.minimum(1.0, (step + 1.0) / (self.warmup_epochs * self.steps_per_epoch))
      lr = lr * warm
    return lr

  def get_config(self):
    return {'base_lr': self.base_lr, 'steps_per_epoch': self.steps_per_epoch, 'kind': self.kind,
            'decay_epochs': self.decay_epochs, 'decay_factor': self.decay_factor,
            'warmup_epochs': self.warmup_epochs, 'total_epochs': self.total_epochs}
