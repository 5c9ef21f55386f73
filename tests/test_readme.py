"""The README's Python runs as written, and every kqreg name it quotes exists."""

import importlib
import os
import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks():
  return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_python_blocks_run_in_order(tmp_path, monkeypatch):
  blocks = _python_blocks()
  assert len(blocks) >= 4
  monkeypatch.chdir(tmp_path)
  namespace = {}
  for i, code in enumerate(blocks):
    exec(compile(code, f"README.md block {i + 1}", "exec"), namespace)  # pylint: disable=exec-used
  policy = str(namespace["policy"])
  assert policy.startswith("w") and "last=w8a8" in policy
  assert (tmp_path / "runs" / "sens" / "sensitivity.png").exists()
  assert (tmp_path / "logs" / "noise.csv").exists()
  assert namespace["report"]["weights"]
  assert os.path.getsize(tmp_path / "model.tflite") > 0
  assert namespace["check"]["examples"] == len(namespace["x_calib"])


def _quoted_names():
  text = README.read_text()
  names = set(re.findall(r"(?<![\w/.])(kqreg(?:\.[A-Za-z_]\w*)+)", text))
  return sorted(n for n in names if not n.endswith((".py", ".json", ".cfg")))


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
