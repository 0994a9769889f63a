"""Every library and test file is covered by a Bazel target (skipped where bazel is absent)."""

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
