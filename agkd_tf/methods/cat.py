"""CAT: Customized Adversarial Training, with one perturbation budget per training example.

Cheng, Lei, Chen, Dhillon, Hsieh, "CAT: Customized Adversarial Training for Improved Robustness"
(arXiv:2002.06789, 2020). The recipe is `docs/algorithms.md` ("CAT"), which follows the
paper's rule because the two public implementations (the authors' cmhcbb/CAT-Customized-
Adversarial-Training and hirokiadachi/Customized-Adversarial-Training) disagree and both have
bugs. One step on a batch (x, y) with training-set indices i:

1. eps_i <- min(eps_i + 0.005, eps_max), eps_max = `--eps` (8/255); every eps_i starts at 0.
2. Adaptive label q_i = (1 - c eps_i) onehot(y_i) + c eps_i Dir(1_K), c = 10.
3. x' = PGD-K (K = 10, step 2/255) inside each example's own ball of radius eps_i, BN eval,
   ascending the training loss of the example (CE_q, plus the hinge for MIX), from x itself.
4. One BN-train pass on x'. eps_i <- eps_i - 0.005 where that pass misclassifies x'.
5. Loss: mean CE_q(z(x')); `--cat_loss=mix` adds mean max(max_{j != y} z_j - z_y + 10, 0).

Choices, against the two implementations:
- Misclassification (step 4) is judged on the logits of the training forward pass (BN train,
  before the weight update), the pass the recipe's "after the forward pass" names and the one
  the loss is computed on; it costs no extra forward pass. hirokiadachi does the same. The
  authors' code (version 2) judges on a BN-eval pass at the end of the attack and lowers eps_i
  where the example is classified *correctly*, the opposite of the paper's rule; it also uses
  0.0025 steps capped at 0.035, and indexes eps by a sampler permutation that the shuffled
  loader does not follow.
- The attack is a real PGD: each step starts where the last ended. hirokiadachi restarts every
  step from x (`x = inputs.requires_grad_()`), which makes its ten steps one step of 2/255.
- The attack starts at x, with no random start, as both implementations do (the recipe asks for
  none; with eps_i = 0 there is nothing to randomise anyway).
- One Dirichlet draw per step serves the attack and the loss: the min-max objective has one loss.
  Both implementations draw a second label after the eps update for the loss.
- The MIX hinge is on logits with kappa 10, unweighted, as the recipe says; hirokiadachi applies
  it to probabilities, the authors weight it by eps_i.

State and tf.distribute: eps lives in a non-trainable float32 tf.Variable of `num_train` entries,
an attribute of the method, so `tf.train.Checkpoint(method=...)` saves and restores it and a
resumed run continues with the budgets it had. Under MirroredStrategy the variable is mirrored
(one copy per replica, `aggregation=NONE`): each replica all-gathers the indices and new budgets of
the whole global batch from its peers and applies the same scatter to its own copy, so the copies
stay equal without a cross-replica reduction of sparse updates. The indices of one global batch
are distinct (a batch is a slice of a permutation), so the scatter has no write conflicts.
"""

import tensorflow as tf

from agkd_tf import attacks
from agkd_tf.core import losses
from agkd_tf.methods import base
from agkd_tf.methods import hparams

ETA = 0.005  # The per-step change of eps_i.
SMOOTHING_SCALE = 10.0  # c of the adaptive label.
HINGE_KAPPA = 10.0  # The margin of CAT-MIX's CW hinge.
LOSSES = ('ce', 'mix')


def raise_budgets(eps, eps_max, eta=ETA):
  """Before the attack: eps_i <- min(eps_i + eta, eps_max), per example ([B] float32)."""
  return tf.minimum(tf.cast(eps, tf.float32) + eta, eps_max)


def lower_budgets(raised, misclassified, eta=ETA):
  """After the forward pass: eps_i <- eps_i - eta where x'_i is misclassified (never below 0)."""
  return tf.maximum(tf.where(misclassified, raised - eta, raised), 0.0)


def adaptive_labels(labels, eps, num_classes, seed, scale=SMOOTHING_SCALE):
  """q = (1 - c eps) onehot(y) + c eps Dirichlet(1_K), from stateless Gamma(1, 1) draws.

  Args:
    labels: [B] int labels.
    eps: [B] per-example budgets (c eps <= 1 for q to be a distribution).
    num_classes: K.
    seed: int32 [2] stateless seed.
    scale: c.

  Returns:
    [B, K] float32 target distributions.
  """
  batch = tf.shape(labels)[0]
  # Dir(1_K) is K Gamma(1, 1) draws normalised. Gamma(1, 1) is the unit exponential, drawn as
  # -log(1 - U): unlike the stateless gamma op it has an XLA kernel, so the step compiles on GPU.
  uniform = tf.random.stateless_uniform([batch, num_classes], seed)
  gamma = -tf.math.log1p(-uniform)
  dirichlet = gamma / tf.reduce_sum(gamma, axis=-1, keepdims=True)
  weight = scale * tf.cast(eps, tf.float32)[:, None]
  return (1.0 - weight) * tf.one_hot(labels, num_classes) + weight * dirichlet


def margin_hinge(logits, labels, kappa=HINGE_KAPPA):
  """CAT-MIX's CW hinge max(max_{j != y} z_j - z_y + kappa, 0), per example ([B])."""
  logits = tf.cast(logits, tf.float32)
  other = tf.gather(logits, attacks.most_confusing_labels(logits, labels), batch_dims=1)
  true = tf.gather(logits, labels, batch_dims=1)
  return tf.nn.relu(other - true + kappa)


class CAT(base.Method):
  """Customized adversarial training with per-example budgets and adaptive labels."""

  hparams_class = hparams.CatHParams

  loss_terms = ('loss', 'ce', 'hinge', 'mean_eps')
  accuracies = ('adv_accuracy',)
  needs_indices = True

  def __init__(self, network, num_classes, config, teacher=None, class_bank=None, seed=0,
               **kwargs):
    super().__init__(network, num_classes, config, teacher=teacher, class_bank=class_bank,
                     seed=seed, **kwargs)
    num_train = int(self.num_train or 0)
    if num_train <= 0:
      raise ValueError('CAT keeps one eps per training example: MethodConfig.num_train must be '
                       'the training-set size')
    self.loss_kind = config.cat_loss
    if self.loss_kind not in LOSSES:
      raise ValueError(f'unknown cat_loss "{self.loss_kind}"; valid: {", ".join(LOSSES)}')
    # Created in the caller's strategy scope: mirrored under MirroredStrategy (see the module
    # docstring for why aggregation is NONE).
    self.budgets = tf.Variable(tf.zeros([num_train]), trainable=False, name='cat_budgets',
                               synchronization=tf.VariableSynchronization.ON_WRITE,
                               aggregation=tf.VariableAggregation.NONE)

  def untracked_state(self):
    return super().untracked_state() + [self.budgets]

  def store_budgets(self, indices, values):
    """budgets[indices] = values on every replica's copy (call in replica context)."""
    ctx = tf.distribute.get_replica_context()
    if ctx is not None and ctx.num_replicas_in_sync > 1:
      indices = ctx.all_gather(indices, axis=0)
      values = ctx.all_gather(values, axis=0)
    self.budgets.scatter_update(tf.IndexedSlices(values, indices))

  def example_loss(self, logits, labels, targets):
    """Per-example training loss: CE_q, plus the hinge for MIX; what the attack ascends."""
    loss = losses.soft_cross_entropy(logits, targets)
    if self.loss_kind == 'mix':
      loss += margin_hinge(logits, labels)
    return loss

  def adversarial(self, images, labels, targets, eps):
    """PGD-K within per-example budgets `eps` from x, ascending `example_loss`, BN eval."""
    config = self.config
    x = tf.convert_to_tensor(images, tf.float32)

    def step(x_adv):
      with tf.GradientTape() as tape:
        tape.watch(x_adv)
        objective = tf.reduce_sum(self.example_loss(
            self.attack_logits(x_adv), labels, targets))
      grad = tape.gradient(objective, x_adv)
      return (tf.stop_gradient(
          attacks.project(x_adv + config.step_size * tf.sign(grad), x, eps)),)

    x_adv, = attacks.repeat(step, (x,), config.attack_steps)
    return tf.stop_gradient(x_adv)

  def compute_losses(self, images, labels, indices=None):
    if indices is None:
      raise ValueError('CAT needs the training-set index of every example (needs_indices)')
    labels = tf.cast(labels, tf.int32)
    indices = tf.cast(indices, tf.int32)
    seed = tf.cast(self.rng.make_seeds(1)[:, 0], tf.int32)
    eps = raise_budgets(tf.gather(self.budgets, indices), self.config.eps)
    targets = adaptive_labels(labels, eps, self.num_classes, seed)
    x_adv = self.adversarial(images, labels, targets, eps)
    logits = self.network(x_adv, training=True)['logits']
    wrong = tf.not_equal(tf.argmax(tf.cast(logits, tf.float32), -1, output_type=tf.int32), labels)
    final = lower_budgets(eps, wrong)
    self.store_budgets(indices, final)
    ce = tf.reduce_mean(losses.soft_cross_entropy(logits, targets))
    hinge = (tf.reduce_mean(margin_hinge(logits, labels)) if self.loss_kind == 'mix'
             else tf.constant(0.0))
    terms = {'loss': ce + hinge, 'ce': ce, 'hinge': hinge, 'mean_eps': tf.reduce_mean(final)}
    return terms, {'adv_accuracy': logits}
