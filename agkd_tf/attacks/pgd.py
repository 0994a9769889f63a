"""Projected gradient descent in the L-inf ball (Madry et al., ICLR 2018), and its shared pieces.

PGD(n): start from x + U(-eps, eps), then n times x' <- P_eps(x' + step * sign grad L(x')), where
P_eps clips into [x - eps, x + eps] and then into [0, 1]. L is the cross-entropy, or the CW-inf
margin loss of Carlini & Wagner (IEEE S&P 2017) as the AGKD-BML, Bilateral and Feature Scattering
code writes it: -max(z_y - max_{j != y} z_j + 50, 0). Targeted PGD descends the loss toward the
given labels; AGKD-BML aims it at the most confusing class, argmax_{j != y} z_j.

Choices:
- A pure function of (model_fn, x, y, config). The whole loop runs in the caller's graph (`repeat`):
  unrolled when the step count is a small Python int on a CPU, as cleverhans's traced Python loop
  is (on an AVX-512 EPYC an unrolled copy ran 5-12% faster than a `tf.while_loop`; on an AVX2 one
  the two tie: `bench/attack_throughput.py` times both), and one `tf.while_loop` otherwise, so the
  graph holds one copy of the model whatever the number of steps. A batch of an already-seen
  shape does not retrace. Nothing here asks for XLA; the caller decides.
- `model_fn` must run the network in inference mode (`training=False`): BN eval, and no label
  leaking, since the attack is given the true labels.
- The budget and the step may be scalars or per-example [B] vectors (CAT keeps one eps per example).
- The perturbation, the projection and the loss stay float32. Only the network's forward and
  backward pass may run in a lower `dtype` (bfloat16 in training), through one cast of its input.
- The projection is written as x + clip(x' - x, -eps, eps), the op order of cleverhans 4, so that
  our adversarial examples and cleverhans's agree bit for bit from the same start.
"""

import numbers

import tensorflow as tf

from agkd_tf.core import losses

# The step of every iterative attack in AGKD-BML's evaluation and training.
DEFAULT_STEP_SIZE = 2 / 255

# The confidence of the CW-inf margin loss in the official AGKD-BML, Bilateral and FS code.
CW_CONFIDENCE = 50.0

LOSSES = ('ce', 'cw')

# Attack loops of at most this many steps (a Python int) are unrolled on CPUs. Each unrolled step
# adds a copy of the forward and backward pass to the graph, so tracing and Grappler's rewrites
# grow with the count; 20 covers every evaluation and training attack we run (PGD-20, CW-20,
# K = 10 training attacks), and a cnn-cpu step with two K = 10 attacks traced in 15.3 s unrolled
# against 14.0 s as while_loops.
MAX_UNROLLED_STEPS = 20


def _unrolls(steps):
  """Whether `repeat` unrolls a loop of `steps` steps here."""
  if isinstance(steps, bool) or not isinstance(steps, numbers.Integral):
    return False  # A tensor (or a bool by mistake): only a while_loop can run it.
  # On a GPU a while_loop is one XLA cluster or a few kernels per step either way, and unrolling
  # would multiply compile time by the step count for no measured gain, so GPUs keep the loop.
  return 0 <= steps <= MAX_UNROLLED_STEPS and not tf.config.list_logical_devices('GPU')


def repeat(body, state, steps):
  """Runs `state = body(*state)` `steps` times inside the caller's graph.

  Args:
    body: a function of the state tensors returning new state tensors of the same structure.
    state: a tuple of tensors.
    steps: a Python int (unrolled when small, see `MAX_UNROLLED_STEPS`) or a scalar tensor.

  Returns:
    The final state, a tuple.
  """
  state = tuple(state)
  if _unrolls(steps):
    for _ in range(steps):
      state = tuple(body(*state))
    return state
  steps = tf.cast(steps, tf.int32)
  out = tf.while_loop(lambda i, *_: i < steps, lambda i, *s: (i + 1,) + tuple(body(*s)),
                      (tf.constant(0),) + state)
  return tuple(out[1:])


def per_example(value, rank):
  """A scalar, or a [B] vector reshaped to [B, 1, ..., 1] so that it broadcasts over an image.

  Args:
    value: a Python number or a scalar or [B] tensor.
    rank: the rank of the images it applies to (4 for NHWC).

  Returns:
    A float32 tensor of rank 0 or `rank`.
  """
  value = tf.cast(value, tf.float32)
  if value.shape.rank == 1:
    value = tf.reshape(value, [-1] + [1] * (rank - 1))
  return value


def project(x_adv, x, eps):
  """P_eps: clip into [x - eps, x + eps], then into [0, 1].

  Args:
    x_adv: [B, H, W, C] candidate images.
    x: [B, H, W, C] clean images in [0, 1].
    eps: scalar or [B] budget.

  Returns:
    The projected images, float32.
  """
  x = tf.convert_to_tensor(x, tf.float32)
  eps = per_example(eps, x.shape.rank)
  # Clipping the perturbation rather than the image is the same projection; it is written this
  # way because it is cleverhans's op order, which makes the two agree to the last bit.
  delta = tf.clip_by_value(x_adv - x, -eps, eps)
  return tf.clip_by_value(x + delta, 0.0, 1.0)


def cw_margin_loss(logits, labels, confidence=CW_CONFIDENCE):
  """The CW-inf loss that PGD ascends: -max(z_y - max_{j != y} z_j + confidence, 0).

  The official code finds max_{j != y} z_j by subtracting 1e4 from z_y, which is wrong once the
  logits spread by more than 1e4; masking with the lowest float is exact and costs the same.

  Args:
    logits: [B, K] logits.
    labels: [B] int labels (true labels when untargeted).
    confidence: the margin kappa.

  Returns:
    [B] float32 losses, <= 0.
  """
  logits = tf.cast(logits, tf.float32)
  is_label = tf.one_hot(labels, tf.shape(logits)[-1], on_value=True, off_value=False)
  correct = tf.reduce_sum(tf.where(is_label, logits, 0.0), axis=-1)
  other = tf.reduce_max(tf.where(is_label, tf.float32.min, logits), axis=-1)
  return -tf.nn.relu(correct - other + confidence)


def most_confusing_labels(logits, labels):
  """The most confusing class of each example, argmax_{j != y} z_j (AGKD-BML's attack target).

  Args:
    logits: [B, K] logits, usually of the clean images in BN eval.
    labels: [B] true labels.

  Returns:
    [B] int32 labels, never equal to `labels`.
  """
  logits = tf.cast(logits, tf.float32)
  is_label = tf.one_hot(labels, tf.shape(logits)[-1], on_value=True, off_value=False)
  # The lowest float, not -inf, so that a row of -inf logits still gives a class other than y.
  masked = tf.where(is_label, tf.float32.min, logits)
  return tf.argmax(masked, axis=-1, output_type=tf.int32)


def check_loss(loss):
  """Raises ValueError on a loss name outside LOSSES (before any tracing starts)."""
  if loss not in LOSSES:
    raise ValueError(f'Unknown attack loss "{loss}"; valid: {", ".join(LOSSES)}')


def attack_loss(logits, labels, loss='ce'):
  """Per-example loss that an untargeted attack ascends.

  Args:
    logits: [B, K] logits.
    labels: [B] int labels.
    loss: 'ce' (cross-entropy) or 'cw' (the CW-inf margin loss, confidence 50).

  Returns:
    [B] float32 losses.
  """
  check_loss(loss)
  if loss == 'ce':
    return losses.cross_entropy(logits, labels)
  return cw_margin_loss(logits, labels)


def loss_gradient(model_fn, x_adv, labels, loss='ce', targeted=False, dtype=tf.float32):
  """Gradient, with respect to the images, of the objective an attack ascends.

  Untargeted, the objective is the summed loss at `labels`; targeted, its negation, exactly as
  cleverhans's `compute_gradient` negates the loss (so the two gradients are bitwise equal).

  Args:
    model_fn: images -> logits, in inference mode.
    x_adv: [B, H, W, C] float32 images.
    labels: [B] true labels (untargeted) or target labels (targeted).
    loss: 'ce' or 'cw'.
    targeted: descend the loss toward `labels` instead of ascending it.
    dtype: the dtype the network is fed; the returned gradient is float32 whatever it is.

  Returns:
    [B, H, W, C] float32 gradient (zeros where the logits do not depend on a pixel).
  """
  dtype = tf.as_dtype(dtype)
  with tf.GradientTape() as tape:
    tape.watch(x_adv)
    inputs = x_adv if dtype == tf.float32 else tf.cast(x_adv, dtype)
    # The loss is computed in float32 whatever the network ran in: a bfloat16 softmax loses the
    # small probability differences the attack climbs.
    logits = tf.cast(model_fn(inputs), tf.float32)
    objective = tf.reduce_sum(attack_loss(logits, labels, loss))
    if targeted:
      objective = -objective
  return tape.gradient(objective, x_adv, unconnected_gradients=tf.UnconnectedGradients.ZERO)


def uniform_start(x, eps, seed=None):
  """x + U(-eps, eps), projected: PGD's random start.

  Args:
    x: [B, H, W, C] clean images in [0, 1].
    eps: scalar or [B] budget.
    seed: optional int32 [2] stateless seed; without it, TensorFlow's stateful generator.

  Returns:
    [B, H, W, C] float32 starting points.
  """
  x = tf.convert_to_tensor(x, tf.float32)
  shape = tf.shape(x)
  if seed is not None:
    noise = tf.random.stateless_uniform(shape, seed, -1.0, 1.0)
  else:
    noise = tf.random.uniform(shape, -1.0, 1.0)
  return project(x + per_example(eps, x.shape.rank) * noise, x, eps)


def pgd(model_fn, x, y, eps, step_size, steps, random_start=True, loss='ce', targeted=False,
        seed=None, dtype=tf.float32, start=None):
  """L-inf PGD; without a random start it is BIM.

  Args:
    model_fn: images -> logits, in inference mode.
    x: [B, H, W, C] clean images in [0, 1].
    y: [B] true labels (untargeted) or target labels (targeted).
    eps: scalar or [B] per-example budget in pixel units.
    step_size: scalar or [B] per-example step.
    steps: number of steps (a Python int or a scalar tensor).
    random_start: start from x + U(-eps, eps) (projected) instead of x.
    loss: 'ce' or 'cw' (the CW-inf margin loss with confidence 50).
    targeted: descend the loss toward `y` instead of ascending it away from `y`.
    seed: optional int32 [2] stateless seed for the random start.
    dtype: the dtype the network is fed (e.g. tf.bfloat16 in training); the perturbation and the
      projection stay float32.
    start: optional [B, H, W, C] starting point inside the eps ball of x, replacing the random or
      clean start (AGKD-BML draws its starts per global batch so replicas agree).

  Returns:
    [B, H, W, C] float32 adversarial images, within the eps ball of x and in [0, 1], with no
    gradient flowing back through them.
  """
  check_loss(loss)
  x = tf.convert_to_tensor(x, tf.float32)
  rank = x.shape.rank
  step_size = per_example(step_size, rank)
  if start is not None:
    x_adv = tf.convert_to_tensor(start, tf.float32)
  else:
    x_adv = uniform_start(x, eps, seed) if random_start else x

  def body(x_adv):
    grad = loss_gradient(model_fn, x_adv, y, loss, targeted, dtype)
    return (tf.stop_gradient(project(x_adv + step_size * tf.sign(grad), x, eps)),)

  x_adv, = repeat(body, (x_adv,), steps)
  return tf.stop_gradient(x_adv)
