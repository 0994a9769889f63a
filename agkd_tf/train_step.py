"""The compiled training step: one distributed step per call, with the non-finite policy.

`make_step_fn` compiles a method's `train_step` under a tf.distribute strategy, with `next()` of
the batch iterator inside the traced function. A non-finite loss either stops the run
(`nan_policy='stop'`: the trainer raises, nothing is saved) or, with `'skip_batch'`, leaves the
step without effect (`NonFiniteGuard`, a wrapper optimiser). `distribute` hands each replica its slice of the global
batch.
"""

import math
import threading

import keras
import tensorflow as tf

from agkd_tf import strategy_utils

NAN_POLICIES = ('stop', 'skip_batch')


def first_replica(values, strategy):
  # The strategy is passed, not read with tf.distribute.get_strategy(): the training loop runs
  # outside `strategy.scope()`, where that returns the default strategy, which leaves a
  # MirroredStrategy's PerReplica values unsplit.
  return {k: strategy.experimental_local_results(v)[0] for k, v in values.items()}


class NonFiniteGuard(keras.optimizers.Optimizer):
  """An optimiser wrapper that leaves every variable untouched on a step whose loss is not finite.

  It wraps an optimiser the way `keras.optimizers.LossScaleOptimizer` does, for
  `nan_policy='skip_batch'`, so no method has to know: `Method.train_step` hands its total loss
  to `optimizer.scale_loss` and its gradients to `optimizer.apply`, which is all the guard needs.

  - `scale_loss` notes this replica's loss.
  - `apply` decides, with one all-reduce over the replicas, whether any replica's loss or
    gradient is not finite, and then either applies the gradients with the inner optimiser or
    skips it. It branches in the cross-replica context (as LossScaleOptimizer does): a `tf.cond`
    whose branch calls `merge_call` (the inner `apply`) is not allowed in a replica context. A skipped step leaves every weight and momentum as it was; zeroing the gradient
    would not do, since coupled weight decay and momentum would still move the weights.
  The iteration counter still advances on a skipped step: the batch was consumed, and resume,
  the lr schedule and the (seed, step) random draws all count batches.

  The guard has no state of its own: its iterations, learning rate and variables are the inner
  optimiser's. `install` puts it on a compiled method without making it a checkpoint dependency,
  so the checkpoint still holds the inner optimiser at the same paths and a run may be resumed
  with or without `--nan_policy=skip_batch`.
  """

  def __init__(self, inner_optimizer):
    if isinstance(inner_optimizer, keras.optimizers.LossScaleOptimizer):
      # It has its own skip of non-finite steps (and needs it to lower its loss scale).
      raise ValueError('the non-finite guard does not wrap a LossScaleOptimizer')
    super().__init__(learning_rate=0.0, name='non_finite_guard')
    self.inner_optimizer = inner_optimizer
    self._local = threading.local()  # MirroredStrategy traces each replica in its own thread.

  @classmethod
  def install(cls, method):
    """Wraps a compiled method's optimiser (once); returns the guard."""
    if isinstance(method.optimizer, cls):
      return method.optimizer
    guard = cls(method.optimizer)
    # object.__setattr__: Keras' and tf.Module's attribute tracking would make the guard the
    # method's checkpoint dependency in place of the inner optimiser.
    object.__setattr__(method, 'optimizer', guard)
    return guard

  def build(self, var_list):
    if not self.inner_optimizer.built:
      self.inner_optimizer.build(var_list)
    self.built = True

  @property
  def variables(self):
    return self.inner_optimizer.variables

  @property
  def iterations(self):
    return self.inner_optimizer.iterations

  @property
  def learning_rate(self):
    return self.inner_optimizer.learning_rate

  @learning_rate.setter
  def learning_rate(self, learning_rate):
    self.inner_optimizer.learning_rate = learning_rate

  def scale_loss(self, loss):
    self._local.loss = loss
    return self.inner_optimizer.scale_loss(loss)

  def nonfinite(self):
    """Whether this replica's last traced step had a non-finite loss or gradient."""
    return self._local.nonfinite

  def apply(self, grads, trainable_variables=None):
    if not self.built:
      self.build(trainable_variables)
    loss = getattr(self._local, 'loss', None)
    bad = (tf.constant(False) if loss is None else
           tf.logical_not(tf.math.is_finite(tf.cast(loss, tf.float32))))
    for g in grads:
      if g is not None:
        bad = tf.logical_or(bad, tf.logical_not(tf.reduce_all(tf.math.is_finite(g))))
    self._local.nonfinite = bad
    # Every replica must take the same decision, or their weights (and, across workers, their
    # collectives) part ways: one all-reduce, outside any branch.
    context = tf.distribute.get_replica_context()
    skip = context.all_reduce(tf.distribute.ReduceOp.SUM, tf.cast(bad, tf.float32)) > 0
    if tf.__internal__.distribute.strategy_supports_no_merge_call():
      # (XLA on GPUs.) The inner apply has no merge_call: branch in the replica context.
      tf.cond(skip, self._skip, lambda: self.inner_optimizer.apply(grads, trainable_variables))
    else:
      context.merge_call(self._cross_replica_apply, args=(skip, grads, trainable_variables))

  def _cross_replica_apply(self, distribution, skip, grads, trainable_variables):
    def apply():
      distribution.extended.call_for_each_replica(self.inner_optimizer.apply,
                                                  args=(grads, trainable_variables))

    # Every replica holds the same all-reduced decision; the first one's stands for all.
    tf.cond(distribution.experimental_local_results(skip)[0], self._skip, apply)

  def _skip(self):
    self.inner_optimizer.iterations.assign_add(1)

  def update_step(self, gradient, variable, learning_rate):
    raise NotImplementedError('the guard applies through its inner optimiser')

  def get_config(self):
    return {'inner_optimizer': keras.optimizers.serialize(self.inner_optimizer)}


def make_step_fn(method, strategy, jit_compile, nan_policy=None):
  """One distributed train step on the next batch of an iterator, compiled.

  As in Keras's own trainer, `next(iterator)` happens inside the traced function, so tf.data hands
  the batch to the step without a round trip through Python tensors.

  Args:
    method: a built and compiled `methods.Method`.
    strategy: the strategy it was built under.
    jit_compile: XLA for the replica step.
    nan_policy: None for the plain step; 'stop' or 'skip_batch' to also report non-finite
      losses, agreed across all replicas. 'skip_batch' wraps the method's optimiser in
      `NonFiniteGuard` and restores what the forward pass changed (BatchNorm moving statistics, the
      loss and accuracy trackers) when the step is skipped.

  Returns:
    `step_fn(iterator)`. Without `nan_policy` it returns the method's logs (per replica); with one,
    `(logs, step_logs, nonfinite)`: the logs after the policy, the logs as the step computed them
    (they name the bad term) and whether any replica's loss was not finite.
  """
  if nan_policy is None:
    replica_step = tf.function(method.train_step, jit_compile=jit_compile,
                               reduce_retracing=True)
  elif nan_policy in NAN_POLICIES:
    replica_step = tf.function(_policy_step(method, nan_policy), jit_compile=jit_compile,
                               reduce_retracing=True)
  else:
    raise ValueError(f'unknown nan policy {nan_policy!r}')

  @tf.function(reduce_retracing=True)
  def step_fn(iterator):
    return strategy.run(replica_step, args=(next(iterator),))

  return step_fn


def _policy_step(method, nan_policy):
  """The replica step of `make_step_fn` with a non-finite check (and, skip_batch, the guard)."""
  guard = None
  if nan_policy == 'skip_batch':
    guard = NonFiniteGuard.install(method)
  kept = []
  if guard:
    # What the forward pass changes outside the optimiser. The frozen teacher is left out: it is
    # never updated, and copying a WRN's weights every step would cost for nothing.
    teacher = {id(v) for v in method.teacher.weights} if method.teacher is not None else set()
    seen = set()
    for v in list(method.non_trainable_variables) + [v for m in method.metrics
                                                     for v in m.variables]:
      if id(v) not in teacher and id(v) not in seen:
        seen.add(id(v))
        kept.append(v)

  def step(data):
    before = [tf.identity(v.value) for v in kept]
    logs = method.train_step(data)
    if guard:
      bad = guard.nonfinite()
    else:
      bad = tf.logical_not(tf.math.is_finite(logs[method.loss_terms[0]]))
    # Every replica must take the same decision, or their weights (and, across workers, their
    # collectives) part ways.
    count = tf.distribute.get_replica_context().all_reduce(
        tf.distribute.ReduceOp.SUM, tf.cast(bad, tf.float32))
    bad = count > 0
    if not guard:
      return logs, logs, bad
    for v, old in zip(kept, before):
      v.assign(tf.where(bad, old, v.value))
    return {m.name: m.result() for m in method.metrics}, logs, bad

  return step


def distribute(ds, strategy, global_batch_size):
  """The distributed form of a dataset of global batches.

  One replica: the dataset itself. OneDeviceStrategy's distributed-dataset wrapper halved
  throughput on our CPUs (its prefetch competes with the step for the two cores).

  Several workers: each input pipeline takes its own contiguous slice of every global batch, so
  replica r of N sees examples [r B/N, (r + 1) B/N) of the batch a single device would see, and
  the all-reduced update equals the single-device one. tf.data's auto-sharding is not used: on an
  in-memory dataset it falls back to sharding by element, whose order we would not control.
  """
  replicas = strategy.num_replicas_in_sync
  if replicas == 1:
    return ds
  if strategy_utils.num_workers(strategy) <= 1:
    return strategy.experimental_distribute_dataset(ds)

  def dataset_fn(context):
    pipelines = context.num_input_pipelines
    per_pipeline = global_batch_size // pipelines
    start = context.input_pipeline_id * per_pipeline
    local = ds.map(lambda *parts: tuple(p[start:start + per_pipeline] for p in parts))
    local_replicas = replicas // pipelines
    if local_replicas > 1:
      local = local.rebatch(per_pipeline // local_replicas, drop_remainder=True)
    return local

  return strategy.distribute_datasets_from_function(dataset_fn)


def describe_bad_terms(logs, loss_terms):
  bad = [n for n in loss_terms[1:] if not math.isfinite(float(logs.get(n, 0.0)))]
  return ', '.join(bad) if bad else loss_terms[0]
