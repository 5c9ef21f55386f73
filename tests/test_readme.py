"""The README is a landing page: its one Python example runs as written, its
links reach files that exist, and every kqreg name it or the documentation
quotes exists.

The README's longer examples moved into the guides (docs/guides/*.md);
tests/test_docs.py runs those and checks what they write.
"""

import importlib
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"


def _python_blocks():
  return re.findall(r"^```python\n(.*?)^```", README.read_text(), re.S | re.M)


def test_readme_stays_a_landing_page():
  """One example and the Quickstart; the guides hold the rest."""
  text = README.read_text()
  assert len(text.splitlines()) <= 150, "move user-guide text into docs/guides"
  assert len(_python_blocks()) == 1
  assert "## Quickstart" in text
  assert 'pip install -e ".[docs]" && mkdocs serve' in text


def test_python_block_runs(tmp_path, monkeypatch):
  (code,) = _python_blocks()
  monkeypatch.chdir(tmp_path)
  namespace = {"__name__": "__main__"}
  exec(compile(code, "README.md block 1", "exec"), namespace)  # pylint: disable=exec-used
  kqreg = namespace["kqreg"]
  qat = namespace["qat"]
  assert kqreg.qat.is_quantized(qat)
  assert qat.optimizer is not None   # compiled, as the example ends
  profile = kqreg.summary(qat)
  bits = [l.weight_bits for l in profile.layers if l.params and l.weight_bits]
  assert bits[0] == 8 and bits[-1] == 8 and 4 in bits   # first/last at w8a8


def _links(text):
  """Relative link targets of a Markdown text (images included), no anchors."""
  targets = re.findall(r"\]\(([^)\s]+)\)", text)
  return [t.split("#", 1)[0] for t in targets
          if not re.match(r"[a-z]+:", t) and not t.startswith("#")]


def test_readme_links_reach_existing_files():
  """Links are relative to the repository, so they work on GitHub."""
  links = _links(README.read_text())
  assert links
  missing = [l for l in links if not (ROOT / l).exists()]
  assert not missing, f"README links to missing files: {missing}"


def test_readme_links_every_guide():
  linked = {(ROOT / l).resolve() for l in _links(README.read_text())}
  guides = sorted((DOCS / "guides").glob("*.md"))
  assert guides
  unlinked = [g.name for g in guides if g.resolve() not in linked]
  assert not unlinked, f"README does not link these guides: {unlinked}"


def _quoted_names():
  names = set()
  for path in [README, *sorted(DOCS.rglob("*.md"))]:
    names |= set(re.findall(r"(?<![\w/.])(kqreg(?:\.[A-Za-z_]\w*)+)",
                            path.read_text()))
  return sorted(n for n in names
                if not n.endswith((".py", ".json", ".cfg", ".md")))


def test_names_are_collected_from_the_docs():
  names = _quoted_names()
  # From README.md, the noise guide, and the export guide.
  assert {"kqreg.quantize", "kqreg.noise.NOISE_CSV_COLUMNS",
          "kqreg.export.storage.MEASURED"} <= set(names)


@pytest.mark.parametrize("name", _quoted_names())
def test_every_quoted_name_exists(name):
  """`kqreg.a.b.c` is a module, or an attribute of the longest module prefix."""
  parts = name.split(".")
  for cut in range(len(parts), 0, -1):
    try:
      obj = importlib.import_module(".".join(parts[:cut]))
    except ModuleNotFoundError:
      continue
    for attr in parts[cut:]:
      obj = getattr(obj, attr)
    return
  pytest.fail(f"{name} is not importable")
