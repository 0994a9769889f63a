"""Loss helpers shared by the methods, written as the official PyTorch code computes them.

All functions return per-example losses ([B]) so that callers choose the reduction once; the
method base divides by the number of replicas exactly once.
"""

import tensorflow as tf


def smoothed_labels(labels, num_classes, smoothing):
  """The official label smoothing: 1 - s on the true class and s / (K - 1) on each other class.

  This is not Keras's `label_smoothing`, which gives (1 - s) + s / K to the true class and s / K to
  the others. AGKD-BML, Feature Scattering and the natural teacher use this form (s = 0.5).

  Args:
    labels: [B] int labels.
    num_classes: K.
    smoothing: s in [0, 1).

  Returns:
    [B, K] float32 target distributions.
  """
  one_hot = tf.one_hot(labels, num_classes, dtype=tf.float32)
  if not smoothing:
    return one_hot
  off = smoothing / (num_classes - 1)
  return one_hot * (1.0 - smoothing) + (1.0 - one_hot) * off


def soft_cross_entropy(logits, targets):
  """CE_q(z) = -sum_k q_k log softmax(z)_k, per example."""
  return -tf.reduce_sum(targets * tf.nn.log_softmax(tf.cast(logits, tf.float32)), axis=-1)


def cross_entropy(logits, labels, num_classes=None, smoothing=0.0):
  """Per-example CE, with the official label smoothing when `smoothing` > 0."""
  logits = tf.cast(logits, tf.float32)
  if not smoothing:
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
  k = num_classes or logits.shape[-1]
  return soft_cross_entropy(logits, smoothed_labels(labels, k, smoothing))


def mart_terms(logits_clean, logits_adv, labels, beta=6.0):
  """MART's boosted BCE and weighted KL, as the official `mart_loss` computes them.

  Wang et al., "Improving Adversarial Robustness Requires Revisiting Misclassified Examples",
  ICLR 2020 (YisenWang/MART). The constants 1.0001, 1e-12 and 1.0000001 are the official ones.
  The CE on the adversarial logits is left to the caller (AGKD-BML uses LSCE there).

  Args:
    logits_clean: [B, K] logits of the clean images (BN train, not detached).
    logits_adv: [B, K] logits of the adversarial images.
    labels: [B] true labels.
    beta: weight of the KL term.

  Returns:
    (bce, weighted_kl): two scalars, `bce + beta * weighted_kl`'s parts (beta already applied).
  """
  p_adv = tf.nn.softmax(tf.cast(logits_adv, tf.float32))
  p_clean = tf.nn.softmax(tf.cast(logits_clean, tf.float32))
  num_classes = tf.shape(p_adv)[-1]
  # y' = the top adversarial class if it is not y, otherwise the runner-up.
  top2 = tf.math.top_k(p_adv, 2).indices
  wrong = tf.where(tf.equal(top2[:, 0], tf.cast(labels, tf.int32)), top2[:, 1], top2[:, 0])
  p_wrong = tf.reduce_sum(p_adv * tf.one_hot(wrong, num_classes), axis=-1)
  bce = tf.reduce_mean(-tf.math.log(1.0001 - p_wrong + 1e-12))
  # PyTorch's KLDivLoss takes 0 * log 0 = 0; log_softmax gives the same without a NaN.
  log_clean = tf.nn.log_softmax(tf.cast(logits_clean, tf.float32))
  kl = tf.reduce_sum(p_clean * (log_clean - tf.math.log(p_adv + 1e-12)), axis=-1)
  p_true = tf.reduce_sum(p_clean * tf.one_hot(labels, num_classes), axis=-1)
  return bce, beta * tf.reduce_mean(kl * (1.0000001 - p_true))


def min_max_normalise(maps):
  """Per-example min-max normalisation over spatial positions: (a - min) / max(a - min).

  Args:
    maps: [B, H, W] attention maps.

  Returns:
    [B, H, W] maps in [0, 1]; an all-constant map becomes all zeros (the guarded division).
  """
  shifted = maps - tf.reduce_min(maps, axis=[1, 2], keepdims=True)
  peak = tf.reduce_max(shifted, axis=[1, 2], keepdims=True)
  return shifted / tf.maximum(peak, 1e-12)


def angular_distance(a, b):
  """D(a, b) = 1 - |cos(a, b)|, the cosine clamped to at most 1, per example ([B])."""
  a = tf.math.l2_normalize(tf.cast(a, tf.float32), axis=-1, epsilon=1e-12)
  b = tf.math.l2_normalize(tf.cast(b, tf.float32), axis=-1, epsilon=1e-12)
  cos = tf.minimum(tf.reduce_sum(a * b, axis=-1), 1.0)
  return 1.0 - tf.abs(cos)


def angular_triplet(anchor, positive, negative, margin=0.03, norm_weight=0.001):
  """The angular triplet loss of TLA and AGKD-BML, with its embedding-norm regulariser.

  mean(max(0, margin + D(a, p) - D(a, n))) + norm_weight * (mean(a^2) + mean(p^2) + mean(n^2)),
  the norm means element-wise over batch x features, as the official code computes them.

  Returns:
    A scalar.
  """
  hinge = tf.nn.relu(margin + angular_distance(anchor, positive)
                     - angular_distance(anchor, negative))
  norms = sum(tf.reduce_mean(tf.square(tf.cast(e, tf.float32)))
              for e in (anchor, positive, negative))
  return tf.reduce_mean(hinge) + norm_weight * norms


def kl_from_logits(logits_p, logits_q):
  """KL(p || q) per example, with p = softmax(logits_p) and q = softmax(logits_q).

  TRADES's term, as PyTorch's `KLDivLoss(log_softmax(z_q), softmax(z_p))` sums it over classes.
  Both sides go through log_softmax: Keras's `KLDivergence` clips probabilities to [1e-7, 1],
  which changes the value and zeroes the gradient of confident examples. Nothing is detached, so
  the gradient reaches both logits (TRADES does not detach its clean target in the update).

  Args:
    logits_p: [B, K] logits of the reference distribution (the clean images).
    logits_q: [B, K] logits of the other one (the adversarial images).

  Returns:
    [B] float32; `tf.reduce_mean` of it is PyTorch's "batchmean".
  """
  log_p = tf.nn.log_softmax(tf.cast(logits_p, tf.float32))
  log_q = tf.nn.log_softmax(tf.cast(logits_q, tf.float32))
  return tf.reduce_sum(tf.exp(log_p) * (log_p - log_q), axis=-1)


def bilateral_label(logits, labels, gamma=0.01, multi=9.0):
  """Bilateral's adversarial label (R-MC-LA; Wang and Zhang, ICCV 2019), from the clean logits.

  With L_j = -log(p_j + 1e-8) and, over j != y, m = min L, M = max L and
  D = sum_{j != y} (L_j - m + gamma):
    delta = 1 / (1 + multi * (M - m + gamma) / D),
    q_j = delta * (L_j - m + gamma) / D for j != y, and q_y = 1 - delta.
  What follows from it (and what the tests check): the off-class entries sum to delta, so q sums
  to 1; the largest off-class entry is delta * (M - m + gamma) / D = (1 - delta) / multi, so q_y is
  exactly `multi` times it whatever the logits; and as (M - m + gamma) / D lies in
  [1 / (K - 1), 1), q_y lies in [multi / (K - 1 + multi), multi / (1 + multi)): [0.5, 0.9) for
  K = 10, with 0.5 (and 0.5 / 9 elsewhere, the official LSCE 0.5) when the off-class
  probabilities are all equal. The mass goes to the least likely classes (largest L_j), the
  direction in which the label raises the CE most: hence "label adversarial".

  Args:
    logits: [B, K] clean logits (the method takes them in BN eval).
    labels: [B] true labels.
    gamma: the official 0.01, which keeps every off-class entry positive.
    multi: the official 9.

  Returns:
    [B, K] float32 target distributions, with no gradient (the official label is a constant).
  """
  logits = tf.cast(logits, tf.float32)
  is_label = tf.one_hot(labels, tf.shape(logits)[-1], on_value=True, off_value=False)
  neg_log = -tf.math.log(tf.nn.softmax(logits) + 1e-8)
  low = tf.reduce_min(tf.where(is_label, tf.float32.max, neg_log), axis=-1, keepdims=True)
  high = tf.reduce_max(tf.where(is_label, tf.float32.min, neg_log), axis=-1, keepdims=True)
  shifted = tf.where(is_label, 0.0, neg_log - low + gamma)
  total = tf.reduce_sum(shifted, axis=-1, keepdims=True)
  delta = 1.0 / (1.0 + multi * (high - low + gamma) / total)
  return tf.stop_gradient(tf.where(is_label, 1.0 - delta, delta * shifted / total))
