"""The house rules: what installs, what imports what, no side effects at import."""

import ast
import configparser
import importlib.util
import os
import pathlib
import subprocess
import sys

import kqreg

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _packages_in_setup_cfg():
  config = configparser.ConfigParser()
  config.read(ROOT / "setup.cfg")
  return {line.strip() for line in config["options"]["packages"].splitlines()
          if line.strip()}


def test_setup_cfg_lists_every_package_of_the_tree():
  tree = {".".join(p.parent.relative_to(ROOT).parts)
          for p in (ROOT / "kqreg").rglob("__init__.py")}
  assert tree | {"kqreg_trainers"} == _packages_in_setup_cfg()


def test_every_non_python_source_the_library_reads_is_package_data():
  import fnmatch
  config = configparser.ConfigParser()
  config.read(ROOT / "setup.cfg")
  data = {package.strip(): patterns.split()
          for package, patterns in config["options.package_data"].items()}
  sources = [p for p in (ROOT / "kqreg").rglob("*")
             if p.is_file() and p.suffix not in (".py", ".pyc")
             and "__pycache__" not in p.parts]
  assert sources, "the kernel source should be found"
  for source in sources:
    package = ".".join(source.parent.relative_to(ROOT).parts)
    assert any(fnmatch.fnmatch(source.name, pattern)
               for pattern in data.get(package, [])), source


def test_tests_import_the_checkout_not_an_installed_copy():
  assert pathlib.Path(kqreg.__file__).resolve().parent == ROOT / "kqreg"
  spec = importlib.util.find_spec("kqreg_trainers")
  assert spec is not None, "pip install -e . installs the trainers as kqreg_trainers"
  assert pathlib.Path(spec.origin).resolve().parent == ROOT / "trainers"


def _imports(path):
  tree = ast.parse(path.read_text())
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      yield from (alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      yield node.module
      yield from (f"{node.module}.{alias.name}" for alias in node.names)


def test_library_imports_no_trainer_and_detection_no_classification():
  for path in (ROOT / "kqreg").rglob("*.py"):
    names = set(_imports(path))
    assert not {n for n in names if n.split(".")[0] in ("trainers", "kqreg_trainers")}, path
    if "detection" in path.parts:
      assert not {n for n in names if n.startswith("kqreg.classification.task")}, path


def test_tfmot_internals_are_imported_in_the_seam_only():
  for path in (ROOT / "kqreg").rglob("*.py"):
    if path.name == "_tfmot.py":
      continue
    private = [n for n in _imports(path)
               if n.startswith("tensorflow_model_optimization.python")]
    assert not private, (path, private)


def test_importing_trainers_and_detection_has_no_side_effects():
  code = (
      "import os, sys, warnings\n"
      "import trainers.flags, trainers.classify, trainers.sweep, trainers.export\n"
      "assert 'tensorflow' not in sys.modules, 'a trainer imported TensorFlow'\n"
      "import kqreg, keras_cv\n"
      "before = list(warnings.filters)  # TensorFlow's own\n"
      "import kqreg.detection\n"
      "assert warnings.filters == before, 'a filter was installed at import'\n"
      "assert sys.stdout is sys.__stdout__\n"
      "print('ok')\n")
  result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.strip().splitlines()[-1] == "ok"


def test_ci_runs_the_readme_test_command_verbatim():
  readme = (ROOT / "README.md").read_text()
  command = ('pip install -e ".[test]" && pip install --no-deps larq==0.14.0 '
             'terminaltables==3.1.10 && pytest -q tests')
  assert f"```bash\n{command}\n```" in readme
  ci = [l for l in (ROOT / ".ci" / "run").read_text().splitlines()
        if l and not l.startswith("#")]
  assert ci[-1] == command
