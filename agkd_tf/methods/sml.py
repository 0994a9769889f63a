"""SML / TLA: adversarial training with a triplet loss and mined hard negatives.

Mao, Zhong, Yang, Vondrick, Ray, "Metric Learning for Adversarial Robustness" (NeurIPS 2019);
official code columbia/Metric_Learning_Adversarial_Robustness (`train_update_fast_triplet.py`,
`config_cifar.json`). AGKD-BML calls it SML, the single-directional metric learning baseline. The
recipe is `docs/algorithms.md` ("SML / TLA"). One step on a batch (x, y):

1. Anchor x' = PGD-K (K = 7 officially) from a uniform random start, BN eval, ascending CE.
2. Positives: the clean x, and x_pos2, a random training image of class y drawn from the class
   bank (`data.ClassBank`) in-graph.
3. Hardest negative: a pool of 10 B random training images is embedded in BN eval; for every
   anchor, the pool image of another class whose embedding is the most cosine-similar to the
   anchor's (also in BN eval) is its negative. The mining is a constant (no gradient).
4. L = CE(z(x'), y) + 2 Trip(x', x, neg) + 2 Trip(x', x_pos2, neg), with the angular triplet
   (margin 0.03, norm weight 0.001) of `losses.angular_triplet`.

As the official sampler, the pool and the second positive go through the training augmentation
(random crop with 4-pixel padding, and a flip where the dataset allows it); with `--noaugment`
they do not, as no training image does. x_pos2 can be x itself
with probability 1 / (images of the class), as in the official per-class sampler.

BN modes in the loss (the recipe fixes only the attack's and the mining's): as the official TF1
code, which feeds `is_training=True` to every branch, each of x', x, x_pos2 and the negatives is
its own BN-train pass with its own batch statistics. The negative's embedding in the loss is
therefore computed under other statistics than when it was mined in BN eval; the official code
does the same, and we keep it rather than change what the baseline is.

Fine-tuning: the official code starts from a Madry AT model; pass `--init_from=AT_RUN_DIR` (a
finished run of the same model) to do the same, see flags/cifar10_sml.cfg.
"""

import tensorflow as tf

from agkd_tf import attacks
from agkd_tf.core import losses
from agkd_tf.data import pipeline
from agkd_tf.methods import base
from agkd_tf.methods import hparams

POOL_FACTOR = 10  # The pool holds 10 B images (the official `mul_num`).


class SML(base.Method):
  """Triplet-loss adversarial training (TLA) with mined hard negatives."""

  hparams_class = hparams.TripletHParams

  loss_terms = ('loss', 'ce', 'triplet_clean', 'triplet_class')
  accuracies = ('clean_accuracy', 'adv_accuracy')

  def __init__(self, network, num_classes, config, teacher=None, class_bank=None, seed=0,
               **kwargs):
    super().__init__(network, num_classes, config, teacher=teacher, class_bank=class_bank,
                     seed=seed, **kwargs)
    if class_bank is None:
      raise ValueError('SML needs the class bank of the training set (second positives and '
                       'the negative pool)')

  @classmethod
  def needs_class_bank(cls, config):
    return True

  def _embed(self, images, training):
    return self.network(images, training=training)

  def _augment(self, images, seed):
    if not self.augment:  # --noaugment: the bank images as they are.
      return images
    return pipeline.augment_batch(images, seed, flip=self.flip)

  def draw_pool(self, size, seeds):
    """`size` random augmented training images and their labels (in-graph bank draws)."""
    bank = self.class_bank
    idx = tf.random.stateless_uniform([size], seeds[:, 0], 0, tf.shape(bank.labels)[0],
                                      dtype=tf.int32)
    images = self._augment(bank.gather_images(idx), seeds[:, 1])
    return images, tf.gather(bank.labels, idx)

  def draw_positives(self, labels, seeds):
    """One random augmented training image of each class in `labels`."""
    u = tf.random.stateless_uniform(tf.shape(labels)[:1], seeds[:, 2])
    idx = self.class_bank.sample_indices(labels, u)
    return self._augment(self.class_bank.gather_images(idx), seeds[:, 3])

  @staticmethod
  def hardest_negatives(anchor_emb, labels, pool_emb, pool_labels):
    """Per anchor, the index of the most cosine-similar pool embedding of another class.

    Args:
      anchor_emb: [B, D] anchor embeddings.
      labels: [B] anchor classes.
      pool_emb: [P, D] pool embeddings.
      pool_labels: [P] pool classes.

    Returns:
      [B] int32 indices into the pool. An anchor whose pool holds no other class gets a
      same-class index; with 10 B random images of K >= 2 classes this does not happen in
      practice.
    """
    a = tf.math.l2_normalize(tf.cast(anchor_emb, tf.float32), axis=-1, epsilon=1e-12)
    p = tf.math.l2_normalize(tf.cast(pool_emb, tf.float32), axis=-1, epsilon=1e-12)
    cos = tf.matmul(a, p, transpose_b=True)
    same = tf.equal(tf.cast(labels, tf.int32)[:, None], tf.cast(pool_labels, tf.int32)[None, :])
    # Cosines lie in [-1, 1]; anything below them excludes the same class.
    return tf.argmax(tf.where(same, -3.0, cos), axis=-1, output_type=tf.int32)

  def adversarial_batch(self, images, labels):
    """Steps 1-3: (x', x_pos2, negatives, negative labels), all constants for the update."""
    config = self.config
    labels = tf.cast(labels, tf.int32)
    seeds = tf.cast(self.rng.make_seeds(5), tf.int32)
    x_adv = tf.stop_gradient(attacks.pgd(
        self.attack_logits, images, labels, config.eps,
        config.step_size, config.attack_steps, random_start=True, seed=seeds[:, 4]))
    batch = tf.shape(images)[0]
    pool, pool_labels = self.draw_pool(POOL_FACTOR * batch, seeds)
    # One BN-eval pass embeds the pool and the anchors together (eval mode is per example).
    emb = tf.stop_gradient(self._embed(tf.concat([pool, x_adv], 0), False)['embedding'])
    pool_size = tf.shape(pool)[0]
    neg_idx = self.hardest_negatives(emb[pool_size:], labels, emb[:pool_size], pool_labels)
    negatives = tf.gather(pool, neg_idx)
    x_pos2 = tf.stop_gradient(self.draw_positives(labels, seeds))
    return x_adv, x_pos2, tf.stop_gradient(negatives), tf.gather(pool_labels, neg_idx)

  def compute_losses(self, images, labels):
    config = self.config
    labels = tf.cast(labels, tf.int32)
    x_adv, x_pos2, negatives, _ = self.adversarial_batch(images, labels)
    out_adv = self._embed(x_adv, True)
    # Separate BN-train passes, one per branch, as the official code runs them.
    out_clean = self._embed(images, True)
    e_clean = out_clean['embedding']
    e_pos2 = self._embed(x_pos2, True)['embedding']
    e_neg = self._embed(negatives, True)['embedding']
    ce = tf.reduce_mean(losses.cross_entropy(out_adv['logits'], labels, self.num_classes,
                                             config.label_smoothing))
    weight = config.metric_weight
    margin, norm_weight = config.margin, config.norm_weight
    trip_clean = weight * losses.angular_triplet(out_adv['embedding'], e_clean, e_neg, margin,
                                                 norm_weight)
    trip_class = weight * losses.angular_triplet(out_adv['embedding'], e_pos2, e_neg, margin,
                                                 norm_weight)
    terms = {'loss': ce + trip_clean + trip_class, 'ce': ce, 'triplet_clean': trip_clean,
             'triplet_class': trip_class}
    return terms, {'clean_accuracy': out_clean['logits'], 'adv_accuracy': out_adv['logits']}
