"""AGKD-BML: Attention Guided Knowledge Distillation and Bi-directional Metric Learning.

H. Wang, Y. Deng, S. Yoo, H. Ling, Y. Lin, "AGKD-BML: Defense Against Adversarial Attack by
Attention Guided Knowledge Distillation and Bi-directional Metric Learning", ICCV 2021
(arXiv:2108.06017); official code hongw579/AGKD-BML. The recipe is
`docs/algorithms.md` ("AGKD-BML"). One step on a batch (x1, y1):

1. y_mc = argmax_{j != y1} z(x1), on the student in BN eval.
2. x1' = targeted PGD-K on the student (BN eval) from x1 + U(-eps, eps) toward y_mc.
3. x2 = a random clean training image of class y_mc for every example, drawn in-graph from the
   class-indexed bank (`data.ClassBank`): one gather, no Python loop over the batch; then the
   training augmentation, as the official `trainset[idx]` applies it.
4. x2' = targeted PGD-K from x2 toward y1 (same eps, step, K and random start).
5. One BN-train student pass over the concatenation [x1', x1, x2'] (BN sees all three at once);
   one BN-eval pass of the frozen teacher over [x1, x2].
6. L = LSCE(z(x1'), y1; s) + MART(z(x1), z(x1'); beta)
       + L1(A(F(x1')), A(F_T(x1))) + L1(A(F(x2')), A(F_T(x2)))
       + lambda1 * [triplet_D(e(x1'), e(x1), e(x2'); margin) + lambda2 * norms].

Ablations (`--attention`, `--metric`, `--agkd_mart`):
- `channel_sum` (AGKD): A(F) = min-max(sum_k F_k).
- `gradcam_orig` / `gradcam_false`: Grad-CAM of the original class (y1 for the x1 pair, y_mc for
  the x2 pair, whose true class is y_mc) or of the false class (the other one). All our networks
  end in global average pooling and one dense layer, so d z_c / d F_k,ij = W_kc / (H W) exactly
  and alpha_k = W_kc / (H W): we take alpha from the dense kernel instead of a second backward
  pass. **alpha is treated as a constant** (`stop_gradient`) in the update, the cheaper choice;
  the gradient flows through F only. A test checks alpha against the tape gradient.
- `cam_avg`: mean over classes of CAM_c = sum_k W_kc F_k (no ReLU), min-max normalised; W is a
  constant as above.
- `none`: no attention term.
- `--metric=bml`: the bi-directional triplet above. `sml`: our single-direction variant for the
  ablation, not the full TLA baseline (which mines the hardest negative from a pool of 10 x B
  embeddings and adds a second positive): the anchor x1' with positive x1 and the clean x2 (an
  image of the most confusing class, the class-level hard negative) as negative, and no backward
  attack. `none`: no metric term and no backward attack.
  Without x2' the second attention term is dropped as well.

Variants of ours, not the paper's (defaults: the official recipe):
- `--agkd_loss=trades`: step 6's LSCE + MART is replaced by TRADES's CE(z(x1), y1)
  + beta * KL(p(x1) || p(x1')) (beta = `--trades_beta`). Label smoothing is a known source of a
  flat cross-entropy surface that makes PGD look stronger than it is against a smoothed model;
  the TRADES term keeps the clean/adversarial consistency of MART without it. The attention and
  metric terms are unchanged.
- `--agkd_attack=untargeted`: x1' = untargeted CE PGD-K away from y1 (same start, eps, step and
  K) in place of the targeted attack toward y_mc; y_mc still picks the backward samples x2 and the
  false class of the attention maps. A targeted step pushes toward one class only, so K targeted
  steps find a weaker x1' than the untargeted attack the evaluation uses.

Randomness (PGD starts, bank draws) comes from stateless seeds derived from (run seed, optimiser
step), generated for the global batch and sliced per replica, so a MirroredStrategy run draws
exactly what a one-device run draws, and a resumed run draws what the uninterrupted one did.
"""

import keras
import tensorflow as tf

from agkd_tf import attacks
from agkd_tf.core import losses
from agkd_tf.data import pipeline
from agkd_tf.methods import base
from agkd_tf.methods import hparams

ATTENTIONS = hparams.ATTENTIONS
METRICS = hparams.METRICS
LOSSES = hparams.AGKD_LOSSES  # --agkd_loss
FORWARD_ATTACKS = hparams.AGKD_ATTACKS  # --agkd_attack
_SEED_TAG = 0x41474B  # 'AGK'
_PAD = 4  # The training augmentation's padding (random crop 32 with 4-pixel zero padding).


def classifier_kernel(network):
  """The [C, K] kernel of the network's final dense layer (the `logits` layer of the zoo)."""
  # Nested: a wrapped user model (`agkd_tf.wrap`) holds its head inside the user's model.
  for layer in reversed(list(network._flatten_layers(include_self=False))):  # pylint: disable=protected-access
    if isinstance(layer, keras.layers.Dense):
      return layer.kernel
  raise ValueError(f'{network.name} has no final dense layer for Grad-CAM / CAM attention')


def attention(feature_map, kind, kernel=None, classes=None):
  """The min-max normalised attention map A(F) of each example.

  Args:
    feature_map: [B, H, W, C] last feature map.
    kind: one of ATTENTIONS except 'none'.
    kernel: [C, K] final dense kernel (Grad-CAM and CAM only), treated as a constant.
    classes: [B] class of each Grad-CAM map.

  Returns:
    [B, H, W] float32 maps in [0, 1].
  """
  f = tf.cast(feature_map, tf.float32)
  if kind == 'channel_sum':
    maps = tf.reduce_sum(f, axis=-1)
  elif kind in ('gradcam_orig', 'gradcam_false'):
    hw = tf.cast(tf.shape(f)[1] * tf.shape(f)[2], tf.float32)
    # alpha_k = spatial mean of d z_c / d F_k = W_kc / (H W) for a GAP + dense head.
    alpha = tf.stop_gradient(tf.gather(tf.transpose(kernel), classes)) / hw  # [B, C]
    maps = tf.nn.relu(tf.einsum('bhwc,bc->bhw', f, alpha))
  elif kind == 'cam_avg':
    mean_w = tf.stop_gradient(tf.reduce_mean(kernel, axis=1))  # [C]
    maps = tf.einsum('bhwc,c->bhw', f, mean_w)
  else:
    raise ValueError(f'unknown attention "{kind}"; valid: {", ".join(ATTENTIONS)}')
  return losses.min_max_normalise(maps)


class AGKDBML(base.Method):
  """AGKD-BML training on the shared method base."""

  hparams_class = hparams.AgkdBmlHParams

  loss_terms = ('loss', 'lsce', 'mart_bce', 'mart_kl', 'attention', 'triplet')
  accuracies = ('clean_accuracy', 'adv_accuracy')
  default_label_smoothing = 0.5  # The official LSCE(0.5).

  def __init__(self, network, num_classes, config, teacher=None, class_bank=None, seed=0,
               **kwargs):
    super().__init__(network, num_classes, config, teacher=teacher, class_bank=class_bank,
                     seed=seed, **kwargs)
    self.attention_kind = config.attention
    self.metric = config.metric
    if self.attention_kind not in ATTENTIONS:
      raise ValueError(f'unknown attention "{self.attention_kind}"')
    if self.metric not in METRICS:
      raise ValueError(f'unknown metric "{self.metric}"')
    self.loss_kind = config.agkd_loss
    self.forward_attack = config.agkd_attack
    if self.loss_kind not in LOSSES:
      raise ValueError(f'unknown agkd_loss "{self.loss_kind}"; valid: {", ".join(LOSSES)}')
    if self.forward_attack not in FORWARD_ATTACKS:
      raise ValueError(f'unknown agkd_attack "{self.forward_attack}"; valid: '
                       f'{", ".join(FORWARD_ATTACKS)}')
    if self.attention_kind != 'none' and teacher is None:
      raise ValueError('AGKD-BML attention distillation needs a teacher network')
    if self.metric != 'none' and class_bank is None:
      raise ValueError('AGKD-BML metric learning needs the class bank of the training set')
    self.seed = int(seed)

  @classmethod
  def needs_teacher(cls, config):
    # Always: even without attention distillation the student starts from the teacher.
    return True

  @classmethod
  def needs_class_bank(cls, config):
    return config.metric != 'none'

  # --- randomness -------------------------------------------------------------------------------

  def _seed(self, stream):
    """A stateless [2] seed for this optimiser step and stream, the same on every replica."""
    step = tf.cast(self.optimizer.iterations, tf.int32)
    # The tag keeps these keys apart from the data pipeline's [seed, epoch] and [epoch, step].
    return tf.stack([tf.constant(self.seed + _SEED_TAG, tf.int32), step * 8 + stream])

  def _replica_draw(self, draw, local_batch, stream):
    """Calls draw(global_shape_batch, seed) and keeps this replica's slice of the rows."""
    ctx = tf.distribute.get_replica_context()
    replicas = ctx.num_replicas_in_sync if ctx is not None else 1
    replica = ctx.replica_id_in_sync_group if ctx is not None else 0
    values = draw(local_batch * replicas, self._seed(stream))
    start = tf.cast(replica, tf.int32) * local_batch
    return values[start:start + local_batch]

  def _uniform_start(self, x, stream):
    shape = tf.shape(x)
    noise = self._replica_draw(
        lambda n, s: tf.random.stateless_uniform(tf.concat([[n], shape[1:]], 0), s, -1.0, 1.0),
        shape[0], stream)
    return attacks.project(x + self.config.eps * noise, x, self.config.eps)

  # --- the step ---------------------------------------------------------------------------------

  def _pgd(self, x, target, stream, targeted=True):
    config = self.config
    return attacks.pgd(self.attack_logits, x, target,
                       config.eps, config.step_size, config.attack_steps, targeted=targeted,
                       start=self._uniform_start(x, stream))

  def draw_backward_samples(self, classes):
    """One clean training image of each class in `classes`, from the class bank (in-graph).

    As the official `trainset[idx]`, the draw goes through the training augmentation (random
    crop with 4-pixel padding, and a horizontal flip where the dataset allows it), unless the run
    trains without augmentation (`--noaugment`): then the bank images come as they are.

    Returns:
      (images [B, H, W, C] float32 in [0, 1], labels [B] equal to `classes`).
    """
    b = tf.shape(classes)[0]
    u = self._replica_draw(lambda n, s: tf.random.stateless_uniform([n], s), b, stream=3)
    idx = self.class_bank.sample_indices(classes, u)
    images = self.class_bank.gather_images(idx)
    if not self.augment:
      return images, tf.gather(self.class_bank.labels, idx)
    offsets = self._replica_draw(
        lambda n, s: tf.random.stateless_uniform([n, 2], s, 0, 2 * _PAD + 1, dtype=tf.int32),
        b, stream=4)
    do_flip = None
    if self.flip:
      do_flip = self._replica_draw(lambda n, s: tf.random.stateless_uniform([n], s) < 0.5, b,
                                   stream=5)
    images = pipeline.crop_and_flip(images, offsets[:, 0], offsets[:, 1], do_flip, _PAD)
    return images, tf.gather(self.class_bank.labels, idx)

  def forward_adversarial(self, x1, y1):
    """Steps 1-2: the most confusing labels and x1' = targeted PGD toward them.

    With `--agkd_attack=untargeted` (ours), x1' ascends the CE of y1 instead.
    """
    logits = self.network(x1, training=False)['logits']
    y_mc = tf.stop_gradient(attacks.most_confusing_labels(logits, y1))
    if self.forward_attack == 'untargeted':
      return y_mc, tf.stop_gradient(self._pgd(x1, y1, stream=1, targeted=False))
    return y_mc, tf.stop_gradient(self._pgd(x1, y_mc, stream=1))

  def adversarial_batch(self, x1, y1):
    """Steps 1-4: (y_mc, x1', x2, x2'); x2 and x2' are None when the metric does not need them."""
    y_mc, x1_adv = self.forward_adversarial(x1, y1)
    x2 = x2_adv = None
    if self.metric != 'none':
      x2, _ = self.draw_backward_samples(y_mc)
      if self.metric == 'bml':
        x2_adv = tf.stop_gradient(self._pgd(x2, y1, stream=2))
    return y_mc, x1_adv, x2, x2_adv

  def _attention_maps(self, f_student, f_teacher, own_class, false_class, kind=None):
    """(student map, teacher map as a constant) of one pair, for the attention `kind`."""
    kind = kind or self.attention_kind
    classes = false_class if kind == 'gradcam_false' else own_class
    kernel_s = classifier_kernel(self.network) if kind != 'channel_sum' else None
    kernel_t = classifier_kernel(self.teacher) if kind != 'channel_sum' else None
    a_s = attention(f_student, kind, kernel_s, classes)
    a_t = tf.stop_gradient(attention(f_teacher, kind, kernel_t, classes))
    return a_s, a_t

  def _attention_pair(self, f_student, f_teacher, own_class, false_class):
    a_s, a_t = self._attention_maps(f_student, f_teacher, own_class, false_class)
    return tf.reduce_mean(tf.abs(a_s - a_t))

  def compute_losses(self, images, labels):
    config = self.config
    x1, y1 = images, tf.cast(labels, tf.int32)
    batch = tf.shape(x1)[0]
    y_mc, x1_adv, x2, x2_adv = self.adversarial_batch(x1, y1)
    parts = [x1_adv, x1] + ([x2_adv] if x2_adv is not None else [])
    out = self.network(tf.concat(parts, 0), training=True)
    logits_adv, logits_clean = out['logits'][:batch], out['logits'][batch:2 * batch]
    emb = out['embedding']
    fmap = out['feature_map']

    zero = tf.constant(0.0)
    if self.loss_kind == 'trades':
      # Ours: TRADES's natural CE plus beta x KL(clean || adversarial) in place of LSCE + MART,
      # logged under the same names (lsce: the CE term, mart_kl: the weighted KL).
      lsce = tf.reduce_mean(losses.cross_entropy(logits_clean, y1, self.num_classes))
      bce = zero
      kl = config.trades_beta * tf.reduce_mean(
          losses.kl_from_logits(logits_clean, logits_adv))
    else:
      lsce = tf.reduce_mean(losses.cross_entropy(logits_adv, y1, self.num_classes,
                                                 config.label_smoothing))
      if config.agkd_mart:
        bce, kl = losses.mart_terms(logits_clean, logits_adv, y1, config.mart_beta)
      else:
        bce = kl = zero

    attn = zero
    if self.attention_kind != 'none':
      teacher_in = [x1] + ([x2] if x2_adv is not None else [])
      f_teacher = tf.stop_gradient(
          self.teacher(tf.concat(teacher_in, 0), training=False)['feature_map'])
      attn = self._attention_pair(fmap[:batch], f_teacher[:batch], y1, y_mc)
      if x2_adv is not None:
        attn2 = self._attention_pair(fmap[2 * batch:], f_teacher[batch:], y_mc, y1)
        attn += attn2

    triplet = zero
    if self.metric == 'bml':
      triplet = losses.angular_triplet(emb[:batch], emb[batch:2 * batch], emb[2 * batch:],
                                       config.margin,
                                       config.norm_weight)
    elif self.metric == 'sml':
      # The clean negative needs an embedding: a BN-eval pass, so BN statistics stay those of
      # [x1', x1] as in the single-direction method.
      e_neg = self.network(x2, training=False)['embedding']
      triplet = losses.angular_triplet(emb[:batch], emb[batch:2 * batch], e_neg,
                                       config.margin,
                                       config.norm_weight)
    triplet = config.metric_weight * triplet

    total = lsce + bce + kl + attn + triplet
    terms = {'loss': total, 'lsce': lsce, 'mart_bce': bce, 'mart_kl': kl, 'attention': attn,
             'triplet': triplet}
    return terms, {'clean_accuracy': logits_clean, 'adv_accuracy': logits_adv}

  def attention_images(self, images, labels):
    """Attention maps of a fixed batch for TensorBoard: student on x1', teacher on x1.

    Returns:
      {name: [B, H, W, 1] float32 images in [0, 1]}.
    """
    if self.teacher is None:
      return {}
    kind = 'channel_sum' if self.attention_kind == 'none' else self.attention_kind
    y1 = tf.cast(labels, tf.int32)
    y_mc, x1_adv = self.forward_adversarial(images, y1)
    f_s = self.network(x1_adv, training=False)['feature_map']
    f_t = self.teacher(images, training=False)['feature_map']
    a_s, a_t = self._attention_maps(f_s, f_t, y1, y_mc, kind)
    return {'attention/student_adv': a_s[..., None],
            'attention/teacher_clean': a_t[..., None],
            'attention/images_adv': x1_adv}
