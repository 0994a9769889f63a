"""Configuration fields that carry their own flag: one default, help text and range for each.

A config dataclass (`TrainConfig`, `EvalConfig`, the methods' hyper-parameter classes) declares
every field with `option(...)`; `agkd_tf.flags` defines the binaries' flags from those fields, and
`check` validates a config built in code with the same ranges. So a default is stated once, and
the flag, the config and the Python API cannot drift apart.
"""

import dataclasses
import typing


REQUIRED = dataclasses.MISSING  # option(REQUIRED, ...): a field, and a flag, without a default.


def option(default, help_text, *, choices=None, lower=None, upper=None, lower_open=False,
           upper_open=False, fraction=False, validator=None, label=None):
  """A dataclass field with what its flag needs.

  Args:
    default: the one default (a tuple for list fields).
    help_text: the flag's help.
    choices: the valid values of an enumerated field.
    lower: lower bound of a number (inclusive unless `lower_open`).
    upper: upper bound of a number (inclusive unless `upper_open`).
    lower_open: whether `lower` itself is out of range.
    upper_open: whether `upper` itself is out of range.
    fraction: a float in pixel units that also accepts '8/255'.
    validator: (predicate, message) for a check the fields above cannot state.
    label: what `check` calls the field in its messages (default: the field's name).
  """
  metadata = dict(help=help_text, choices=choices, lower=lower, upper=upper,
                  lower_open=lower_open, upper_open=upper_open, fraction=fraction,
                  validator=validator, label=label)
  if default is REQUIRED:
    return dataclasses.field(metadata=metadata)
  return dataclasses.field(default=default, metadata=metadata)


def kind(field):
  """('bool' | 'int' | 'float' | 'str', is_list) of a field, from its annotation."""
  annotation = field.type
  args = [a for a in typing.get_args(annotation) if a is not type(None)]
  origin = typing.get_origin(annotation)
  if origin is typing.Union and len(args) == 1:  # Optional[X]
    annotation, args, origin = args[0], typing.get_args(args[0]), typing.get_origin(args[0])
  if origin is not None and args:  # Sequence[X], tuple[X, ...]
    return args[0].__name__, True
  return annotation.__name__, False


def in_range(field, value):
  """Whether `value` is valid for `field` (None is: it means the documented default)."""
  spec = field.metadata
  if value is None:
    return True
  if spec['choices']:
    return value in spec['choices']
  if spec['validator']:
    return spec['validator'][0](value)
  items = value if isinstance(value, (list, tuple)) else [value]
  for v in items:
    if spec['lower'] is not None and (v <= spec['lower'] if spec['lower_open']
                                      else v < spec['lower']):
      return False
    if spec['upper'] is not None and (v >= spec['upper'] if spec['upper_open']
                                      else v > spec['upper']):
      return False
  return True


def range_text(field):
  """'must lie in [0, 0.5] in pixel units ...', 'must be >= 0' or 'must be one of a, b'."""
  spec = field.metadata
  if spec['choices']:
    return f'must be one of {", ".join(spec["choices"])}'
  if spec['validator']:
    return spec['validator'][1]
  left = '(' if spec['lower_open'] else '['
  if spec['upper'] is None:
    return f'must be {">" if spec["lower_open"] else ">="} {spec["lower"]:g}'
  right = ')' if spec['upper_open'] else ']'
  unit = ' in pixel units (8/255 = 0.0314, not 8)' if spec['fraction'] else ''
  return f'must lie in {left}{spec["lower"]:g}, {spec["upper"]:g}{right}{unit}'


def checked(field):
  spec = field.metadata
  return bool(spec['choices'] or spec['validator'] or spec['lower'] is not None or
              spec['upper'] is not None)


def check(config, cls=None):
  """The fields of `config` (of `cls`, default its own class) that are out of range, as lines."""
  problems = []
  for field in dataclasses.fields(cls or type(config)):
    if 'help' not in field.metadata or not hasattr(config, field.name):
      continue
    value = getattr(config, field.name)
    if in_range(field, value):
      continue
    if field.metadata['choices']:
      name = field.metadata.get('label') or field.name
      problems.append(f'unknown {name} "{value}"; valid: '
                      f'{", ".join(field.metadata["choices"])}')
    else:
      problems.append(f'{field.name}={value} {range_text(field)}')
  return problems
