"""Entropic optimal transport between two batches of features, for Feature Scattering.

Zhang & Wang, "Defense Against Adversarial Attacks Using Feature Scattering-based Adversarial
Training", NeurIPS 2019 (official code Haichao-Zhang/FeatureScatter, `ot.py`). The recipe is
`docs/algorithms.md` ("Feature Scattering"):

- Cost C_ij = max(0, 1 - cos(x_i, y_j)) between the rows of two [B, D] feature batches.
- Log-domain Sinkhorn with uniform marginals (1/m and 1/n), entropy 0.01, at most 100
  iterations, stopping once sum_i |u_i - u_prev_i| < 0.1; the plan is
  T = exp((-C + u_i + v_j) / 0.01).
- The transport cost sum_ij T_ij C_ij is differentiated *through* the iterations: the loop is one
  `tf.while_loop`, whose gradient replays the iterations that ran. `maximum_iterations` is given
  so that the gradient's per-iteration stacks have a static bound (XLA needs it).

Choices:
- log-sum-exp is TensorFlow's stable `reduce_logsumexp`; the official code computes
  log(sum(exp(.)) + 1e-6), whose 1e-6 only guards a log of zero that the stable form never meets.
- The update order is the official one: u from v, then v from the new u, then the stopping test
  on u. After the last v update the columns of T sum to 1/n exactly; the rows only within the
  tolerance the stopping rule allows.
- Everything runs in float32 whatever the network's dtype: exp(M / 0.01) is far outside bfloat16.
"""

import tensorflow as tf

ENTROPY = 0.01
MAX_ITERATIONS = 100
THRESHOLD = 0.1


def cosine_cost(x, y):
  """C_ij = max(0, 1 - cos(x_i, y_j)).

  Args:
    x: [m, D] features.
    y: [n, D] features.

  Returns:
    [m, n] float32 costs in [0, 2].
  """
  x = tf.math.l2_normalize(tf.cast(x, tf.float32), axis=-1, epsilon=1e-12)
  y = tf.math.l2_normalize(tf.cast(y, tf.float32), axis=-1, epsilon=1e-12)
  return tf.nn.relu(1.0 - tf.matmul(x, y, transpose_b=True))


def sinkhorn_plan(cost, entropy=ENTROPY, max_iterations=MAX_ITERATIONS, threshold=THRESHOLD):
  """The entropic transport plan between two uniform marginals, by log-domain Sinkhorn.

  Args:
    cost: [m, n] cost matrix.
    entropy: the entropic regularisation (the temperature of the plan).
    max_iterations: at most this many (u, v) updates.
    threshold: stop once sum_i |u_i - u_prev_i| falls below it.

  Returns:
    [m, n] float32 plan T, differentiable with respect to `cost` through the iterations.
  """
  cost = tf.cast(cost, tf.float32)
  m, n = tf.shape(cost)[0], tf.shape(cost)[1]
  log_mu = -tf.math.log(tf.cast(m, tf.float32))
  log_nu = -tf.math.log(tf.cast(n, tf.float32))

  def scaled(u, v):
    return (-cost + u[:, None] + v[None, :]) / entropy

  def body(u, v, _):
    u_prev = u
    u = entropy * (log_mu - tf.reduce_logsumexp(scaled(u, v), axis=1)) + u
    v = entropy * (log_nu - tf.reduce_logsumexp(scaled(u, v), axis=0)) + v
    return u, v, tf.reduce_sum(tf.abs(u - u_prev))

  start = (tf.zeros([m]), tf.zeros([n]), tf.constant(float('inf')))
  u, v, _ = tf.while_loop(lambda u, v, err: err >= threshold, body, start,
                          maximum_iterations=max_iterations)
  return tf.exp(scaled(u, v))


def transport_cost(x, y, entropy=ENTROPY, max_iterations=MAX_ITERATIONS, threshold=THRESHOLD):
  """Feature Scattering's Loss_OT = sum_ij T_ij C_ij, with T from `sinkhorn_plan` on C.

  Args:
    x: [m, D] features (the clean batch in Feature Scattering).
    y: [n, D] features (the perturbed batch).
    entropy, max_iterations, threshold: as `sinkhorn_plan`.

  Returns:
    A float32 scalar, differentiable with respect to x and y (through C and through T).
  """
  cost = cosine_cost(x, y)
  return tf.reduce_sum(sinkhorn_plan(cost, entropy, max_iterations, threshold) * cost)
