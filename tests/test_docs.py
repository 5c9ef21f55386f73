"""The documentation site: it builds strictly, documents every public name,
and its code runs (the guides' Python blocks and the tutorials).

`mkdocs build --strict` turns every warning into an error: a broken link, a
page missing from the nav, an API page naming an object that no longer
exists, a docstring the parser cannot read. The API pages come from the
docstrings by static analysis (griffe): the build imports neither kqreg nor
TensorFlow, and is given a dead proxy so that it cannot reach the network.
"""

import ast
import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
GUIDES = sorted((DOCS / "guides").glob("*.md"))
TUTORIALS = sorted(p for p in (ROOT / "tutorials").glob("*.py")
                   if not p.name.startswith("_"))
# The namespaces whose `__all__` the API reference must cover, by source file.
NAMESPACES = {
    "kqreg": "kqreg/__init__.py",
    "kqreg.qat": "kqreg/qat/__init__.py",
    "kqreg.noise": "kqreg/noise/__init__.py",
    "kqreg.mixed_precision": "kqreg/mixed_precision/__init__.py",
    "kqreg.export": "kqreg/export/__init__.py",
    "kqreg.runs": "kqreg/runs/__init__.py",
}
_DEAD_PROXY = "http://127.0.0.1:9"


def _all_names(path: pathlib.Path):
  """`__all__` of a module, read from its source (no import)."""
  for node in ast.parse(path.read_text()).body:
    if isinstance(node, ast.Assign) and any(
        getattr(t, "id", None) == "__all__" for t in node.targets):
      return list(ast.literal_eval(node.value))
  raise AssertionError(f"{path} has no __all__")


@pytest.fixture(scope="module")
def started(tmp_path_factory):
  """The site build and the tutorials, started at once in two processes.

  They run side by side (and beside the guides' tests, which run in this
  process); `site` and `tutorial_runs` wait for their own.
  """
  site_dir = tmp_path_factory.mktemp("site")
  env = dict(os.environ, NO_MKDOCS_2_WARNING="1", HTTP_PROXY=_DEAD_PROXY,
             HTTPS_PROXY=_DEAD_PROXY, http_proxy=_DEAD_PROXY,
             https_proxy=_DEAD_PROXY, NO_PROXY="127.0.0.1,localhost")
  build_log = (tmp_path_factory.mktemp("build") / "log").open("w+")
  build = subprocess.Popen(
      [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
       str(site_dir)], cwd=ROOT, env=env, stdout=build_log,
      stderr=subprocess.STDOUT, text=True)
  base = tmp_path_factory.mktemp("tutorials")
  args = []
  for script in TUTORIALS:
    folder = base / script.stem
    folder.mkdir()
    args += [str(script), str(folder)]
  results = base / "results.json"
  tutorial_log = (base / "log").open("w+")
  tutorials = subprocess.Popen(
      [sys.executable, "-c", _TUTORIAL_DRIVER, str(results)] + args,
      cwd=base, stdout=tutorial_log, stderr=subprocess.STDOUT, text=True)
  yield {"build": (build, build_log, site_dir),
         "tutorials": (tutorials, tutorial_log, results)}
  for process in (build, tutorials):
    if process.poll() is None:
      process.kill()
      process.wait()
  build_log.close()
  tutorial_log.close()


def _finish(process, log, timeout_s):
  try:
    process.wait(timeout=timeout_s)
  except subprocess.TimeoutExpired:
    process.kill()
    process.wait()
  log.seek(0)
  return log.read()


@pytest.fixture(scope="module")
def site(started):
  """The site, built with `mkdocs build --strict` into a tmp dir."""
  build, log, site_dir = started["build"]
  output = _finish(build, log, 600)
  problems = [line for line in output.splitlines()
              if line.startswith(("WARNING", "ERROR"))]
  assert build.returncode == 0, "\n".join(problems) or output[-3000:]
  return site_dir


def test_site_builds_strictly(site):
  for page in ("index.html", "getting-started/index.html",
               "reference/kqreg/index.html", "design/index.html",
               "tutorials/quantize_and_export/index.html"):
    assert (site / page).is_file(), page


@pytest.mark.parametrize("namespace", sorted(NAMESPACES))
def test_reference_documents_every_public_name(site, namespace):
  """Each name of the namespace's `__all__` has its anchor on an API page."""
  html = "".join(p.read_text() for p in (site / "reference").rglob("*.html"))
  anchors = set(re.findall(r'id="([^"]+)"', html))
  names = _all_names(ROOT / NAMESPACES[namespace])
  missing = [n for n in names if f"{namespace}.{n}" not in anchors]
  assert not missing, f"{namespace}: not on any reference page: {missing}"


def _markdown_bash_blocks(text: str):
  return re.findall(r"^```bash\n(.*?)^```", text, re.S | re.M)


def test_getting_started_has_the_readme_quickstart():
  """Getting started quotes README's Quickstart commands as they are."""
  readme = (ROOT / "README.md").read_text()
  quickstart = readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
  page = (DOCS / "getting-started.md").read_text()
  commands = _markdown_bash_blocks(quickstart)
  assert len(commands) == 2
  for command in commands:
    assert command in _markdown_bash_blocks(page), command


def _python_blocks(path: pathlib.Path):
  return re.findall(r"^```python\n(.*?)^```", path.read_text(), re.S | re.M)


def test_guides_have_code():
  assert len(GUIDES) >= 7
  assert sum(bool(_python_blocks(g)) for g in GUIDES) >= 4


def _check_mixed_precision(namespace, folder):
  policy = str(namespace["policy"])
  assert policy.startswith("w") and "last=w8a8" in policy, policy
  assert (folder / "runs" / "sens" / "sensitivity.png").exists()
  assert (folder / "runs" / "sens" / "sensitivity.csv").exists()


def _check_noise(namespace, folder):
  assert (folder / "logs" / "noise.csv").exists()
  assert namespace["rows"] and namespace["paths"]
  assert "output" in {p["layer"] for p in namespace["paths"]}


def _check_export(namespace, folder):
  assert namespace["report"]["weights"]
  assert (folder / "model.tflite").stat().st_size > 0
  assert namespace["check"]["examples"] == len(namespace["x"])


def _check_bit_policies(namespace, folder):
  assert (folder / "qat.keras").exists()


# What each guide's code must leave behind (the README's longer examples
# moved into these guides, and their checks with them).
GUIDE_CHECKS = {"mixed-precision": _check_mixed_precision,
                "noise": _check_noise,
                "export": _check_export,
                "bit-policies": _check_bit_policies}


def test_every_guide_check_names_a_guide_with_code():
  with_code = {g.stem for g in GUIDES if _python_blocks(g)}
  assert set(GUIDE_CHECKS) <= with_code


@pytest.mark.parametrize(
    "guide", [g for g in GUIDES if _python_blocks(g)], ids=lambda p: p.stem)
def test_guide_python_blocks_run_in_order(guide, tmp_path, monkeypatch):
  """A guide's Python blocks run in order as one script, in a tmp dir, and
  leave behind what the guide says they write."""
  monkeypatch.chdir(tmp_path)
  namespace = {"__name__": "__main__"}
  for i, code in enumerate(_python_blocks(guide)):
    exec(compile(code, f"{guide.name} block {i + 1}", "exec"), namespace)  # pylint: disable=exec-used
  if guide.stem in GUIDE_CHECKS:
    GUIDE_CHECKS[guide.stem](namespace, tmp_path)


def test_tutorials_are_percent_scripts():
  assert len(TUTORIALS) >= 3
  for script in TUTORIALS:
    text = script.read_text()
    assert "# %% [markdown]\n# # " in text, f"{script.name}: no title cell"
    assert re.search(r"^# %%$", text, re.M), f"{script.name}: no code cell"


# Runs each tutorial as `__main__` in its own scratch folder, all in one
# fresh process (one TensorFlow start-up instead of one per tutorial), and
# writes {name: traceback or None} to the JSON file given.
_TUTORIAL_DRIVER = """
import json, os, runpy, sys, traceback
results = {}
out, scripts = sys.argv[1], sys.argv[2:]
for script, folder in zip(scripts[::2], scripts[1::2]):
  os.chdir(folder)
  print(f"=== {os.path.basename(script)}", flush=True)
  try:
    runpy.run_path(script, run_name="__main__")
    results[script] = None
  except BaseException:  # pylint: disable=broad-except
    results[script] = traceback.format_exc()
  with open(out, "w") as f:
    json.dump(results, f)
"""


@pytest.fixture(scope="module")
def tutorial_runs(started):
  """{script path: None if it ran, else its traceback}, and the output."""
  tutorials, log, results = started["tutorials"]
  output = _finish(tutorials, log, 900)
  assert results.exists(), output[-4000:]
  ran = json.loads(results.read_text())
  return {pathlib.Path(k): v for k, v in ran.items()}, output


@pytest.mark.parametrize("tutorial", TUTORIALS, ids=lambda p: p.stem)
def test_tutorial_runs_as_a_script(tutorial, tutorial_runs):
  """Each tutorial runs to its end as `__main__` (`python tutorials/<x>.py`)."""
  results, output = tutorial_runs
  assert tutorial in results, f"{tutorial.name} did not run:\n" + output[-4000:]
  assert results[tutorial] is None, results[tutorial]
