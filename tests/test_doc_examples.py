"""Runs the doctest examples of every kqreg module, as keras-cv does.

Every public function and class (every name in the `__all__` of `kqreg` and
its namespaces) carries a docstring with an `Example:` section in doctest
form; `test_module_doctests` runs the examples of every module under kqreg/,
and `test_public_name_has_example` checks that each public name has one.

A module that cannot be imported (a missing optional dependency, say) fails
its test rather than being skipped.
"""

import doctest
import importlib
import inspect
import os
import pkgutil

import pytest

import kqreg

NAMESPACES = ("kqreg", "kqreg.qat", "kqreg.noise", "kqreg.mixed_precision",
              "kqreg.export", "kqreg.runs")

_OPTIONFLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _module_names():
  """Every module under kqreg/, found from the files (nothing imported)."""
  root = os.path.dirname(kqreg.__file__)
  names = ["kqreg"]

  def walk(path, prefix):
    for info in pkgutil.iter_modules([path], prefix):
      names.append(info.name)
      if info.ispkg:
        walk(os.path.join(path, info.name.rsplit(".", 1)[-1]),
             info.name + ".")

  walk(root, "kqreg.")
  return sorted(names)


MODULES = _module_names()


def _public_names():
  """(namespace, name) for every name in the namespaces' `__all__`."""
  pairs = []
  for namespace in NAMESPACES:
    module = importlib.import_module(namespace)
    pairs.extend((namespace, name) for name in module.__all__)
  return pairs


def test_modules_found():
  # The sweep must see the namespaces and the files others added.
  for name in NAMESPACES + ("kqreg.study.sweep.paired",
                            "kqreg.export.latency", "kqreg.runs.lock"):
    assert name in MODULES


@pytest.mark.parametrize("module_name", MODULES)
def test_module_doctests(module_name):
  module = importlib.import_module(module_name)  # ImportError fails the test
  tests = doctest.DocTestFinder(exclude_empty=True).find(module)
  runner = doctest.DocTestRunner(optionflags=_OPTIONFLAGS)
  report = []
  for test in sorted(tests, key=lambda t: t.name):
    runner.run(test, out=report.append)
  result = runner.summarize(verbose=False)
  assert result.failed == 0, "".join(report)


@pytest.mark.parametrize("namespace,name", _public_names())
def test_public_name_has_example(namespace, name):
  value = getattr(importlib.import_module(namespace), name)
  if not (inspect.isroutine(value) or inspect.isclass(value)):
    return  # constants, tuples and namespaces carry no docstring of their own
  doc = value.__doc__ or ""  # its own, not one inherited
  assert "Example:" in doc and ">>>" in doc, (
      f"{namespace}.{name} has no doctest `Example:` in its docstring")
