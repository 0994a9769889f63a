"""The flags of the agkd_tf binaries, defined from the config dataclasses' fields.

A field declared with `core.options.option` carries its default, help and range; the flag is made
from it here, so `TrainConfig`, `EvalConfig` and the methods' hyper-parameter classes
(`methods.hparams`) hold the only defaults. Flagfiles in `flags/` set these; the resolved values
are written to `model_dir/flags.json`. eps and step sizes accept fractions such as `8/255`, and are
in pixel units of [0, 1] images.
"""

import dataclasses

from absl import flags

from agkd_tf.core import options

FLAGS = flags.FLAGS


def parse_fraction(text):
  """'8/255' -> 0.03137..., '0.031' -> 0.031."""
  text = str(text).strip()
  if '/' in text:
    num, _, den = text.partition('/')
    return float(num) / float(den)
  return float(text)


class FractionParser(flags.FloatParser):
  """A float flag that also accepts 'a/b'."""

  def parse(self, argument):
    try:
      value = parse_fraction(argument)
    except (ValueError, ZeroDivisionError):
      raise ValueError(f'expected a number or a fraction such as 8/255, got "{argument}"') from None
    return super().parse(value)


def define_fraction(name, default, help_text, flag_values=FLAGS):
  flags.DEFINE(FractionParser(), name, default, help_text,
               serializer=flags.ArgumentSerializer(), flag_values=flag_values)


def define_field(field, flag_values=FLAGS):
  """The flag of one config field declared with `options.option`."""
  spec, name = field.metadata, field.name
  required = field.default is dataclasses.MISSING
  default = None if required else field.default
  base, is_list = options.kind(field)
  where = dict(flag_values=flag_values)
  if is_list:
    flags.DEFINE_list(name, None if default is None else [str(v) for v in default], spec['help'],
                      **where)
  elif spec['choices']:
    flags.DEFINE_enum(name, default, list(spec['choices']), spec['help'], **where)
  elif spec['fraction']:
    define_fraction(name, default, spec['help'], **where)
  elif base == 'bool':
    flags.DEFINE_bool(name, default, spec['help'], **where)
  elif base == 'int':
    flags.DEFINE_integer(name, default, spec['help'], **where)
  elif base == 'float':
    flags.DEFINE_float(name, default, spec['help'], **where)
  else:
    flags.DEFINE_string(name, default, spec['help'], **where)
  if options.checked(field) and not spec['choices']:
    flags.register_validator(name, lambda v: v is None or options.in_range(field, v),
                             message=f'--{name} {options.range_text(field)}', **where)
  if required:
    flags.mark_flag_as_required(name, **where)


def define_fields(cls, names=None, flag_values=FLAGS):
  """The flags of `cls`'s option fields (those in `names`, in that order, if given)."""
  fields = {f.name: f for f in dataclasses.fields(cls) if 'help' in f.metadata}
  for name in names or fields:
    define_field(fields[name], flag_values)


def values_from_flags(cls, flag_values=FLAGS):
  """The parsed flags of `cls`'s option fields, as the field types want them (lists: tuples)."""
  values = {}
  for field in dataclasses.fields(cls):
    if 'help' not in field.metadata or field.name not in flag_values:
      continue
    value = flag_values[field.name].value
    base, is_list = options.kind(field)
    if is_list and value is not None:
      parse = {'int': int, 'float': parse_fraction}.get(base, lambda s: s.strip())
      value = tuple(parse(v) for v in value if str(v).strip())
    values[field.name] = value
  return values


def define_train_flags(flag_values=FLAGS):
  """Flags of `python -m agkd_tf.train`: the fields of `TrainConfig`, in groups."""
  from agkd_tf import train_lib  # pylint: disable=g-import-not-at-top  (flags stay light)
  from agkd_tf.methods import hparams  # pylint: disable=g-import-not-at-top
  config = train_lib.TrainConfig
  define_fields(config, train_lib.DATA_FIELDS + train_lib.RUN_FIELDS, flag_values)
  define_fields(hparams.AllHParams, None, flag_values)
  # Renamed to say whose it is (`--method=mart` is another thing); the old name for one release.
  flags.DEFINE_alias('mart', 'agkd_mart', flag_values=flag_values)
  define_fields(config, train_lib.TEACHER_FIELDS + train_lib.OPTIMISER_FIELDS +
                train_lib.RUNTIME_FIELDS, flag_values)
  flags.DEFINE_integer('cpu_devices', 1, 'Split the CPU into this many logical devices (to try '
                       '--strategy=mirrored without GPUs).', lower_bound=1, upper_bound=64,
                       flag_values=flag_values)
  define_fields(config, train_lib.LOOP_FIELDS, flag_values)


def define_export_flags():
  """Flags of `python -m agkd_tf.export`."""
  flags.DEFINE_string('model_dir', None, 'Training run directory.')
  flags.DEFINE_string('export_dir', None, 'Where to write the SavedModel (default: '
                      'model_dir/export).')
  flags.DEFINE_string('checkpoint', None, 'Checkpoint prefix (default: the latest).')
  flags.mark_flag_as_required('model_dir')


def define_evaluate_flags(flag_values=FLAGS):
  """Flags of `python -m agkd_tf.evaluate`: the option fields of `EvalConfig`."""
  from agkd_tf.evaluation import evaluator  # pylint: disable=g-import-not-at-top
  define_fields(evaluator.EvalConfig, None, flag_values)


def define_report_flags():
  """Flags of `python -m agkd_tf.report` (its runs are positional arguments)."""
  flags.DEFINE_string('output', None, 'Also write the table to this file.')


def define_launch_flags():
  """Flags of `python -m agkd_tf.launch` (the training command follows `--`)."""
  flags.DEFINE_integer('workers', 2, 'Local worker processes.', lower_bound=1, upper_bound=64)
  flags.DEFINE_integer('timeout', 0, 'Stop all workers and fail after this many seconds (0: '
                       'never).', lower_bound=0)
