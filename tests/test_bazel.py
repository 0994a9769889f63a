"""Every library and test file is covered by a Bazel target (skipped where bazel is absent)."""

import ast
import glob
import os
import re
import shutil
import subprocess

import pytest

from tests import conftest


def _build_sources():
  with open(os.path.join(conftest.REPO, 'BUILD')) as f:
    text = f.read()
  sources = set(re.findall(r'"([\w/.\-]+\.py)"', text))
  for pattern in re.findall(r'glob\(\["([^"]+)"\]', text):
    sources.update(os.path.relpath(p, conftest.REPO)
                   for p in glob.glob(os.path.join(conftest.REPO, pattern), recursive=True))
  return sources


def test_build_file_covers_every_python_file():
  # The text check runs everywhere; `bazel query` below needs bazel.
  files = {os.path.relpath(p, conftest.REPO)
           for p in glob.glob(os.path.join(conftest.REPO, 'agkd_tf', '**', '*.py'),
                              recursive=True)}
  files |= {os.path.relpath(p, conftest.REPO)
            for p in glob.glob(os.path.join(conftest.REPO, 'tests', '*.py'))}
  missing = sorted(files - _build_sources())
  assert not missing, f'not in any BUILD target: {missing}'


@pytest.mark.skipif(shutil.which('bazel') is None, reason='bazel is not installed')
def test_bazel_query_lists_the_targets():
  out = subprocess.run(['bazel', 'query', '//...'], cwd=conftest.REPO, capture_output=True,
                       text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-2000:]
  for target in ('//:agkd_tf', '//:train', '//:evaluate', '//:export', '//:test_data'):
    assert target in out.stdout


def _targets():
  """{name: (sources, deps)} of BUILD, evaluated with stand-ins for its rules."""
  targets = {}

  def glob_(patterns):
    return sorted(os.path.relpath(p, conftest.REPO) for pattern in patterns
                  for p in glob.glob(os.path.join(conftest.REPO, pattern), recursive=True))

  def rule(name, srcs=(), deps=(), **unused):
    del unused
    targets[name] = (set(srcs), [d.lstrip(':') for d in deps])

  with open(os.path.join(conftest.REPO, 'BUILD')) as f:
    exec(f.read(), {'glob': glob_, 'package': lambda **_: None,  # pylint: disable=exec-used
                    'py_library': rule, 'py_binary': rule, 'py_test': rule})
  return targets


def _module_file(module):
  """The repository file of a dotted agkd_tf module name, or None."""
  base = os.path.join(conftest.REPO, *module.split('.'))
  for path in (base + '.py', os.path.join(base, '__init__.py')):
    if os.path.isfile(path):
      return os.path.relpath(path, conftest.REPO)
  return None


def _imported_files(path):
  """The agkd_tf files a source imports (function-level imports included)."""
  with open(os.path.join(conftest.REPO, path)) as f:
    tree = ast.parse(f.read())
  files = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      # `from a.b import c`: c is a module a/b/c.py, or a name defined in a/b.
      names = [f'{node.module}.{a.name}' if _module_file(f'{node.module}.{a.name}')
               else node.module for a in node.names]
    else:
      continue
    files.update(f for f in map(_module_file, names)
                 if f and names and f.startswith('agkd_tf'))
  return files


def test_build_deps_state_what_the_code_imports():
  """Each target's sources import only its own sources and those of its (transitive) deps."""
  targets = _targets()

  def closure(name, seen):
    if name not in seen:
      seen.add(name)
      for dep in targets[name][1]:
        closure(dep, seen)
    return seen

  wrong = []
  for name, (srcs, _) in targets.items():
    allowed = set().union(*(targets[t][0] for t in closure(name, set())))
    for src in sorted(s for s in srcs if s.startswith(('agkd_tf', 'examples'))):
      wrong += [f'//:{name} {src} imports {f}' for f in sorted(_imported_files(src) - allowed)]
  assert not wrong, '\n'.join(wrong)
