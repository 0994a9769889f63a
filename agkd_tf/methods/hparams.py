"""The methods' hyper-parameters: one frozen dataclass per method, and every default once.

Each method registers the dataclass of the hyper-parameters it reads (`Method.hparams_class`);
a method built with a field it does not have fails at once (`TypeError`), and a misspelt name is
no longer read silently as its default. The classes share fields by inheritance, so a field that
two methods use (TRADES's `trades_beta`, AGKD-BML's `--agkd_loss=trades`) has one definition.

The defaults, ranges and help texts here are the only ones: `agkd_tf.flags` defines the
training binary's method flags from `AllHParams`, `train_lib.TrainConfig` inherits its fields,
and the Python API (`agkd_tf.defend`) accepts exactly their names.

References for the defaults: AGKD-BML (Wang et al., ICCV 2021, official code hongw579/AGKD-BML),
TRADES (Zhang et al., ICML 2019), MART (Wang et al., ICLR 2020), SML/TLA (Mao et al., NeurIPS
2019), CAT (Cheng et al., 2020); docs/algorithms.md gives each method's recipe.
"""

import dataclasses
from typing import Optional

from agkd_tf.core import options
from agkd_tf.core.options import option

# The choices of the enumerated fields (AGKD-BML's are re-exported by `methods.agkd_bml`).
ATTACK_DTYPES = ('auto', 'float32', 'bfloat16')
ATTENTIONS = ('channel_sum', 'gradcam_orig', 'gradcam_false', 'cam_avg', 'none')
METRICS = ('bml', 'sml', 'none')
AGKD_LOSSES = ('official', 'trades')
AGKD_ATTACKS = ('targeted', 'untargeted')
CAT_LOSSES = ('ce', 'mix')


@dataclasses.dataclass(frozen=True)
class CommonHParams:
  """What every method reads: label smoothing and the training-time attack."""
  label_smoothing: Optional[float] = option(
      None, 'Official label smoothing: 1 - s on the true class, s / (K - 1) on the others '
      '(default: the method\'s official value, 0.5 for agkd_bml and feature_scatter, 0 '
      'otherwise).', lower=0.0, upper=1.0, upper_open=True)
  eps: float = option(8 / 255, 'L-inf budget in pixel units, e.g. 8/255.', lower=0.0, upper=0.5,
                      fraction=True)
  step_size: float = option(2 / 255, 'Attack step in pixel units, e.g. 2/255.', lower=0.0,
                            upper=0.5, fraction=True)
  attack_steps: int = option(10, 'Training-time attack steps (K).', lower=0)
  attack_dtype: str = option(
      'auto', 'Compute dtype of the training-time attacks (auto: bfloat16 on a CPU with native '
      'bfloat16, AVX-512-BF16 or AMX, where it measured faster: README, Speed; else the '
      'network\'s own). Evaluation attacks are always float32.', choices=ATTACK_DTYPES)

  def attack_compute_dtype(self):
    """The attack dtype, None for the network's own (`auto`, once `train_lib.method_config` has
    left it: there it is resolved for the machine)."""
    return None if self.attack_dtype == 'auto' else self.attack_dtype


@dataclasses.dataclass(frozen=True)
class TradesHParams(CommonHParams):
  """TRADES: CE on clean images plus beta x KL(p(x) || p(x'))."""
  trades_beta: float = option(6.0, 'TRADES: weight of the KL term (1/lambda).', lower=0.0)


@dataclasses.dataclass(frozen=True)
class MartHParams(CommonHParams):
  """MART: boosted CE plus beta x misclassification-weighted KL."""
  mart_beta: float = option(6.0, 'Weight of MART\'s KL term.', lower=0.0)


@dataclasses.dataclass(frozen=True)
class TripletHParams(CommonHParams):
  """The angular triplet of SML/TLA and AGKD-BML's metric learning."""
  metric_weight: float = option(2.0, 'lambda1: weight of the triplet term.', lower=0.0)
  margin: float = option(0.03, 'Angular triplet margin.', lower=0.0, upper=1.0)
  norm_weight: float = option(0.001, 'lambda2: weight of the embedding-norm regulariser.',
                              lower=0.0)


@dataclasses.dataclass(frozen=True)
class CatHParams(CommonHParams):
  """CAT: per-example eps and label adaptation, its loss."""
  cat_loss: str = option('ce', 'CAT: "ce", or "mix" (adds the CW hinge).', choices=CAT_LOSSES)


@dataclasses.dataclass(frozen=True)
class AgkdBmlHParams(TradesHParams, MartHParams, TripletHParams):
  """AGKD-BML: attention distillation, bi-directional metric learning and their ablations."""
  agkd_mart: bool = option(True, 'AGKD-BML: add the MART BCE and weighted-KL terms (was --mart, '
                           'still accepted).')
  attention: str = option('channel_sum', 'AGKD-BML attention map distilled from the teacher '
                          '(Table 3).', choices=ATTENTIONS)
  metric: str = option('bml', 'AGKD-BML metric learning: bi-directional, single-directional, '
                       'or none (ablations).', choices=METRICS)
  agkd_loss: str = option(
      'official', 'AGKD-BML adversarial term: "official" (LSCE on x1\' plus MART, per '
      '--agkd_mart) '
      'or "trades" (ours, not the paper\'s: CE on x1 plus --trades_beta x KL(p(x1) || '
      'p(x1\'))).', choices=AGKD_LOSSES)
  agkd_attack: str = option(
      'targeted', 'AGKD-BML forward attack: "targeted" toward the most confusing class '
      '(official) or "untargeted" CE ascent away from the true class (ours, not the paper\'s).',
      choices=AGKD_ATTACKS)


@dataclasses.dataclass(frozen=True)
class AllHParams(AgkdBmlHParams, CatHParams):
  """Every method's fields: the training binary's method flags, and tests that build any method."""


def names(cls=AllHParams):
  return tuple(f.name for f in dataclasses.fields(cls))


def of(cls, source):
  """An instance of `cls` with the values of the fields of the same name on `source`."""
  return cls(**{name: getattr(source, name) for name in names(cls)})


def check(values):
  """The method fields of `values` (any object with them) out of range, as one-line messages.

  The training binary's flags check the same ranges when parsed; this is for the Python API and
  for configs built in code.
  """
  return options.check(values, AllHParams)
