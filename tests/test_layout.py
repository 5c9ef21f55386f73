"""The house's rules, checked on the source: a core free of Keras and tfmot,
a small grouped top-level API, and nothing imported from trainers/."""

import ast
import importlib
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

# The design's core: policies, grid math, noise statistics on arrays, the
# knapsack, budgets and the flatbuffer reader. A second binding (Keras 3)
# would reuse them as they are.
CORE = ("kqreg/qat/policy.py", "kqreg/qat/grid.py", "kqreg/noise/arrays.py",
        "kqreg/mixed_precision/knapsack.py", "kqreg/mixed_precision/budget.py",
        "kqreg/export/flatbuffer.py", "kqreg/export/errors.py")
FORBIDDEN = ("tf_keras", "keras", "tensorflow_model_optimization",
             "kqreg._keras2", "kqreg._tfmot", "keras_cv")


def _imports(path):
  tree = ast.parse((ROOT / path).read_text())
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      yield from (alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module:
      yield node.module
      yield from (f"{node.module}.{a.name}" for a in node.names)


def _module(path):
  return path[:-3].replace("/", ".")


@pytest.mark.parametrize("path", CORE)
def test_core_imports_neither_keras_nor_tfmot(path):
  core_modules = {_module(p) for p in CORE}
  for name in _imports(path):
    assert not any(name == f or name.startswith(f + ".") for f in FORBIDDEN), (
        f"{path} imports {name}")
    if name.startswith("kqreg."):
      # kqreg modules it may use: other core modules (or their package).
      assert name in core_modules or any(
          m.startswith(name + ".") or name.startswith(m + ".")
          for m in core_modules), f"{path} imports non-core {name}"


def test_the_check_catches_a_keras_import(tmp_path, monkeypatch):
  bad = tmp_path / "kqreg" / "qat"
  bad.mkdir(parents=True)
  (bad / "policy.py").write_text("import tf_keras\n")
  monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
  with pytest.raises(AssertionError, match="imports tf_keras"):
    test_core_imports_neither_keras_nor_tfmot("kqreg/qat/policy.py")


def test_library_never_imports_trainers():
  for path in (ROOT / "kqreg").rglob("*.py"):
    for name in _imports(str(path.relative_to(ROOT))):
      assert not name.startswith(("trainers", "kqreg_trainers")), (
          f"{path} imports {name}")


def test_top_level_api_is_small_and_importable():
  import kqreg
  assert len(kqreg.__all__) <= 20
  assert len(set(kqreg.__all__)) == len(kqreg.__all__)
  for name in kqreg.__all__:
    assert getattr(kqreg, name) is not None, name
  # tfmot plumbing lives under kqreg.qat, not at the top.
  for plumbing in ("quantize_annotate_layer", "QuantizeWrapperV2",
                   "BitQuantizeConfig", "flatten_nested", "annotate"):
    assert plumbing not in kqreg.__all__
    assert hasattr(kqreg.qat, plumbing)


@pytest.mark.parametrize("namespace", ["kqreg", "kqreg.qat", "kqreg.noise",
                                       "kqreg.mixed_precision", "kqreg.export",
                                       "kqreg.runs"])
def test_every_exported_name_imports(namespace):
  module = importlib.import_module(namespace)
  for name in module.__all__:
    assert hasattr(module, name), f"{namespace}.{name}"


def test_modules_do_not_re_export_their_imports():
  """A module's `__all__` lists what it defines; only package faces
  (`__init__.py`) hand names on, and `_tfmot.py`, the one seam to tfmot,
  whose job is to name tfmot's classes for the rest of kqreg."""
  found = []
  for path in (ROOT / "kqreg").rglob("*.py"):
    if path.name in ("__init__.py", "_tfmot.py"):
      continue
    tree = ast.parse(path.read_text())
    defined = set()
    exported = []
    for node in tree.body:
      if isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
        defined.add(node.name)
      elif isinstance(node, (ast.Assign, ast.AnnAssign)):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        for t in targets:
          if isinstance(t, ast.Name):
            defined.add(t.id)
            if t.id == "__all__":
              exported = [e.value for e in node.value.elts]
    foreign = [n for n in exported if n not in defined]
    found.extend(f"{path.relative_to(ROOT)}: {n}" for n in foreign)
  assert not found, f"re-exported: {found}"


# A module over this many lines must be one concept that reads better whole,
# and docs/design.md must say which and why.
LONG_MODULE_LINES = 400


def _long_modules():
  """Paths over LONG_MODULE_LINES, as docs/design.md writes them."""
  paths = [*(ROOT / "kqreg").rglob("*.py"), *(ROOT / "trainers").glob("*.py")]
  return {str(p.relative_to(ROOT)).removeprefix("kqreg/") for p in paths
          if len(p.read_text().splitlines()) > LONG_MODULE_LINES}


def test_every_long_module_is_named_in_the_design_notes():
  design = (ROOT / "docs" / "design.md").read_text()
  section = design.split(f"stays under about {LONG_MODULE_LINES} lines",
                         1)[1].split("\n\n")[0]
  named = set(re.findall(r"`([\w/]+\.py)`", section))
  long = _long_modules()
  assert not long - named, (
      f"{sorted(long - named)} are over {LONG_MODULE_LINES} lines: split "
      "them, or name each in docs/design.md's list of long modules with its "
      "reason.")
  assert not named - long, (
      f"docs/design.md names {sorted(named - long)} as long modules; they "
      "are not (any more): drop them from its list.")
