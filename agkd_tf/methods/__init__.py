"""Training methods (defences), selected by `--method`."""

from agkd_tf.core.errors import UserError
from agkd_tf.methods import agkd_bml
from agkd_tf.methods import alp
from agkd_tf.methods import at
from agkd_tf.methods import bilateral
from agkd_tf.methods import cat
from agkd_tf.methods import feature_scatter
from agkd_tf.methods import mart
from agkd_tf.methods import natural
from agkd_tf.methods import sml
from agkd_tf.methods import trades
from agkd_tf.methods.base import Method
from agkd_tf.methods.base import MethodConfig

_METHODS = {}


def register(name, cls):
  if name in _METHODS:
    raise ValueError(f'Duplicate method name: {name}')
  _METHODS[name] = cls


register('natural', natural.Natural)
register('at', at.MadryAT)
register('agkd_bml', agkd_bml.AGKDBML)
register('alp', alp.ALP)
register('trades', trades.TRADES)
register('mart', mart.MART)
register('bilateral', bilateral.Bilateral)
register('sml', sml.SML)
register('feature_scatter', feature_scatter.FeatureScatter)
register('cat', cat.CAT)


def names():
  return sorted(_METHODS)


def validate_name(name):
  if name not in _METHODS:
    raise UserError(f'unknown method "{name}"; valid: {", ".join(names())}')


def get(name):
  validate_name(name)
  return _METHODS[name]


def build(name, network, num_classes, config, **kwargs):
  """Instantiates the method `name` around `network` (call inside strategy.scope())."""
  return get(name)(network, num_classes, config, **kwargs)


__all__ = ['Method', 'MethodConfig', 'build', 'get', 'names', 'register', 'validate_name']
