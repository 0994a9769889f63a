"""The algorithm notes live in the repository: docs/algorithms.md, cited by section.

Docstrings and the README cite the notes as `docs/algorithms.md` ("Section") or
(`docs/algorithms.md`, "Section"). A clone of the repository must have every page and section
they cite, and nothing may point at `../shared/docs/`, which exists only beside our checkout.
"""

import pathlib
import re

_REPO = pathlib.Path(__file__).resolve().parent.parent
_DOC = _REPO / 'docs' / 'algorithms.md'

# `docs/algorithms.md` ("Section") or (`docs/algorithms.md`, "Section"), backticks optional; the
# section name may wrap onto the next docstring line.
_CITATION = re.compile(r'(?<![\w./])`?docs/algorithms\.md`?\s*(?:\(\s*|,\s*)"([^"]+)"')
_HEADING = re.compile(r'^#{1,6}\s+(.+?)\s*#*\s*$')
_ANCHOR_LINK = re.compile(r'\]\(#([^)]+)\)')


def _cited_files():
  """The files whose citations the tests check: agkd_tf/**, bench/*.py and README.md."""
  files = [p for p in (_REPO / 'agkd_tf').rglob('*')
           if p.is_file() and '__pycache__' not in p.parts]
  files += sorted((_REPO / 'bench').glob('*.py'))
  files.append(_REPO / 'README.md')
  return files


def _read(path):
  return path.read_text(encoding='utf-8', errors='replace')


def _headings():
  """The heading texts of docs/algorithms.md, fenced code blocks skipped."""
  headings, fenced = [], False
  for line in _read(_DOC).splitlines():
    if line.lstrip().startswith('```'):
      fenced = not fenced
      continue
    match = None if fenced else _HEADING.match(line)
    if match:
      headings.append(match.group(1))
  return headings


def _github_anchor(heading):
  """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
  return re.sub(r'[^\w\- ]', '', heading.lower()).replace(' ', '-')


def _citations():
  """{(file relative to the repository, cited section name)} over the checked files."""
  found = set()
  for path in _cited_files():
    for match in _CITATION.finditer(_read(path)):
      found.add((str(path.relative_to(_REPO)), ' '.join(match.group(1).split())))
  return found


def test_nothing_cites_the_shared_docs():
  offenders = [str(p.relative_to(_REPO)) for p in _cited_files() if 'shared/docs' in _read(p)]
  assert not offenders, f'cite docs/algorithms.md, not ../shared/docs: {offenders}'


def test_every_cited_section_is_a_heading():
  citations = _citations()
  # The methods' docstrings cite sections; finding none means the pattern above went stale.
  assert {'AGKD-BML', 'Baselines'} <= {section for _, section in citations}, citations
  headings = set(_headings())
  missing = sorted((f, s) for f, s in citations if s not in headings)
  assert not missing, f'cited sections that docs/algorithms.md lacks: {missing}'


def test_contents_links_resolve():
  anchors = {_github_anchor(h) for h in _headings()}
  links = _ANCHOR_LINK.findall(_read(_DOC))
  assert links, 'docs/algorithms.md has no table of contents'
  broken = sorted(set(links) - anchors)
  assert not broken, f'links to no heading: {broken}'


def test_citation_pattern_reads_both_forms():
  text = ('The recipe is `docs/algorithms.md` ("SML / TLA").\n'
          'As the recipe (`docs/algorithms.md`, "Base\n    lines"):\n'
          'Not a citation: `../shared/docs/algorithms.md` ("Old").')
  found = [' '.join(m.group(1).split()) for m in _CITATION.finditer(text)]
  assert found == ['SML / TLA', 'Base lines']
