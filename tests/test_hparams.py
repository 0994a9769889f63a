"""One source for every default: the config dataclasses' option fields, their flags and checks.

`methods.hparams` (each method's hyper-parameters), `train_lib.TrainConfig` and
`evaluation.EvalConfig` declare each field once with `core.options.option`; the binaries' flags
are made from those fields.
"""

import dataclasses
import inspect
import re

from absl import flags
import pytest

from agkd_tf import evaluation
from agkd_tf import flags as agkd_flags
from agkd_tf import methods
from agkd_tf import train_lib
from agkd_tf.methods import hparams
from tests import helpers


def _flag_values():
  """The method flags alone, in a FlagValues of their own."""
  values = flags.FlagValues()
  for field in dataclasses.fields(hparams.AllHParams):
    agkd_flags.define_field(field, values)
  return values


def test_every_method_reads_only_the_fields_of_its_own_dataclass():
  for name in methods.names():
    cls = methods.get(name)
    fields = set(hparams.names(cls.hparams_class))
    # The functions the class resolves (MART overrides TRADES's loss, which reads trades_beta).
    source = ''.join(inspect.getsource(f) for _, f in inspect.getmembers(cls, inspect.isfunction)
                     if f.__module__.startswith('agkd_tf.methods.'))
    read = set(re.findall(r'\bconfig\.([a-z_]+)\b', source)) - {'attack_compute_dtype'}
    assert read <= fields, (name, sorted(read - fields))
    assert issubclass(hparams.AllHParams, cls.hparams_class)


def test_a_misspelt_or_foreign_field_fails_at_once():
  with pytest.raises(TypeError):
    hparams.TradesHParams(trades_betta=6.0)
  with pytest.raises(dataclasses.FrozenInstanceError):
    hparams.CommonHParams().eps = 0.1
  # A method refuses another method's dataclass: TRADES cannot read trades_beta from CAT's.
  with pytest.raises(TypeError, match='TradesHParams'):
    methods.build('trades', helpers.dense_network(num_classes=3), 3, hparams.CatHParams())


def test_the_config_and_the_flags_take_the_dataclass_defaults():
  config = train_lib.TrainConfig(model_dir='x')
  values = _flag_values()
  values(['prog'])
  for field in dataclasses.fields(hparams.AllHParams):
    assert getattr(config, field.name) == field.default, field.name
    assert values[field.name].default == field.default, field.name
    assert values[field.name].help.endswith(field.metadata['help']), field.name
  # The method gets its own class, label smoothing resolved to its official default.
  agkd = train_lib.method_config(dataclasses.replace(config, method='agkd_bml'))
  assert type(agkd) is hparams.AgkdBmlHParams and agkd.label_smoothing == 0.5
  at = train_lib.method_config(dataclasses.replace(config, method='at', trades_beta=1.0))
  assert type(at) is hparams.CommonHParams and at.label_smoothing == 0.0
  assert not hasattr(at, 'trades_beta')


def test_attack_dtype_auto_is_bfloat16_only_on_a_cpu_with_native_bfloat16(tmp_path, monkeypatch):
  from agkd_tf import strategy_utils  # pylint: disable=g-import-not-at-top
  with_bf16 = tmp_path / 'bf16'
  with_bf16.write_text('processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16 vnni\n')
  without = tmp_path / 'plain'
  without.write_text('processor\t: 0\nflags\t\t: fpu sse avx2 avx512f\n')
  resolve = strategy_utils.resolve_attack_dtype
  assert strategy_utils.cpu_bfloat16_flags(str(with_bf16)) == ['avx512_bf16']
  assert strategy_utils.cpu_bfloat16_flags(str(tmp_path / 'missing')) == []
  assert resolve('auto', str(with_bf16)) == 'bfloat16'
  assert resolve('auto', str(without)) is None  # The network's own (float32 on a CPU).
  assert resolve('float32', str(with_bf16)) == 'float32'  # An explicit choice stands.
  assert resolve('bfloat16', str(without)) == 'bfloat16'
  monkeypatch.setattr(strategy_utils, 'has_gpu', lambda: True)
  assert resolve('auto', str(with_bf16)) is None  # On a GPU, --mixed_precision decides.
  monkeypatch.undo()
  # The method sees the resolved value; flags.json keeps what the user asked for.
  monkeypatch.setattr(strategy_utils, 'cpu_bfloat16_flags', lambda *a: ['amx_bf16'])
  config = train_lib.TrainConfig(model_dir='x', method='at')
  assert train_lib.method_config(config).attack_compute_dtype() == 'bfloat16'
  assert config.attack_dtype == 'auto'
  fixed = dataclasses.replace(config, attack_dtype='float32')
  assert train_lib.method_config(fixed).attack_compute_dtype() == 'float32'
  monkeypatch.setattr(strategy_utils, 'cpu_bfloat16_flags', lambda *a: [])
  assert train_lib.method_config(config).attack_compute_dtype() is None


@pytest.mark.parametrize('argv,message', [
    (['--eps=8'], '--eps must lie in [0, 0.5] in pixel units (8/255 = 0.0314, not 8)'),
    (['--label_smoothing=1'], '--label_smoothing must lie in [0, 1)'),
    (['--margin=2'], '--margin must lie in [0, 1]'),
    (['--trades_beta=-1'], '--trades_beta must be >= 0'),
    (['--attention=foo'], 'value should be one of'),
])
def test_the_flags_check_the_dataclass_ranges(argv, message):
  values = _flag_values()
  with pytest.raises(flags.Error, match=re.escape(message)):
    values(['prog'] + argv)


def test_config_checks_match_the_flag_checks():
  assert not hparams.check(train_lib.TrainConfig(model_dir='x'))
  bad = dataclasses.replace(train_lib.TrainConfig(model_dir='x'), eps=0.6, agkd_loss='foo')
  assert hparams.check(bad) == [
      'eps=0.6 must lie in [0, 0.5] in pixel units (8/255 = 0.0314, not 8)',
      'unknown agkd_loss "foo"; valid: official, trades']
  # The Python API names the same fields.
  assert set(train_lib.METHOD_HPARAMS) == set(hparams.names())


def test_mart_is_a_deprecated_alias_of_agkd_mart():
  values = _flag_values()
  values(['prog'])
  flags.DEFINE_alias('mart', 'agkd_mart', flag_values=values)
  values(['prog', '--nomart'])
  assert values.agkd_mart is False and values['mart'].present


@pytest.mark.parametrize('define,cls', [
    (agkd_flags.define_train_flags, train_lib.TrainConfig),
    (agkd_flags.define_evaluate_flags, evaluation.EvalConfig),
])
def test_every_binary_flag_of_a_config_field_has_the_field_default(define, cls):
  values = flags.FlagValues()
  define(values)
  values(['prog', '--model_dir=x'])
  options_fields = [f for f in dataclasses.fields(cls) if 'help' in f.metadata]
  assert len(options_fields) > 15
  for field in options_fields:
    flag = values[field.name]
    default = None if field.default is dataclasses.MISSING else field.default
    if isinstance(default, tuple):
      default = [str(v) for v in default]
    assert flag.default == default, field.name
  parsed = agkd_flags.values_from_flags(cls, values)
  config = cls(**parsed)
  for field in options_fields:
    if field.name != 'model_dir':
      assert getattr(config, field.name) == field.default, field.name


def test_the_evaluator_checks_its_config_with_the_flag_ranges():
  # pylint: disable=g-import-not-at-top
  from agkd_tf.attacks.autoattack import autoattack
  from agkd_tf.core.errors import UserError
  from agkd_tf.evaluation import evaluator
  # pylint: enable=g-import-not-at-top
  choices = {f.name: f.metadata.get('choices') for f in dataclasses.fields(evaluation.EvalConfig)}
  assert set(choices['aa_version']) == set(autoattack.VERSIONS)
  config = evaluation.EvalConfig(model_dir='x')
  for field, value, message in (
      ('attack_backend', 'torch', 'unknown attack backend "torch"; valid: native, cleverhans'),
      ('aa_version', 'fast', 'unknown AutoAttack version "fast"; valid: standard, plus, rand'),
      ('eps', 0.0, 'eps=0.0 must lie in (0, 0.5] in pixel units (8/255 = 0.0314, not 8)'),
      ('eps', 8.0, 'eps=8.0 must lie in (0, 0.5]')):
    with pytest.raises(UserError, match=re.escape(message)):
      evaluator.check_config(dataclasses.replace(config, **{field: value}))
  with pytest.raises(UserError, match='pgx'):
    evaluator.check_config(dataclasses.replace(config, attacks=('clean', 'pgx')))
  evaluator.check_config(config)


def test_training_and_the_evaluator_share_the_data_fields():
  # pylint: disable=g-import-not-at-top
  from agkd_tf import data
  from agkd_tf.core.errors import UserError
  from agkd_tf.evaluation import evaluator
  # pylint: enable=g-import-not-at-top
  train = {f.name: f for f in dataclasses.fields(train_lib.TrainConfig)}
  evaluate = {f.name: f for f in dataclasses.fields(evaluation.EvalConfig)}
  assert train['data_dir'].metadata == evaluate['data_dir'].metadata
  for fields in (train, evaluate):
    assert fields['dataset'].metadata['help'].startswith(f'Dataset: {data.DATASET_NAMES}.')
  assert train['dataset'].default == 'cifar10' and evaluate['dataset'].default is None
  # A misspelt dataset fails before the (missing) model is looked at.
  with pytest.raises(UserError, match='unknown dataset "cifar"; valid: cifar10, svhn'):
    evaluator.check_config(evaluation.EvalConfig(model_dir='missing', dataset='cifar'))
