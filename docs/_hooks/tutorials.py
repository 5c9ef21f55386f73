"""An mkdocs hook: each tutorials/*.py (jupytext percent format) as a page.

A tutorial is a plain Python script whose `# %% [markdown]` cells hold the
prose and whose `# %%` cells hold the code; tests/test_docs.py runs each one
as a script. This hook turns `tutorials/<name>.py` into the page
`tutorials/<name>.md` (prose as Markdown, code as Python blocks, no outputs:
git keeps none) and puts the script beside it for download. It needs neither
jupytext nor a kernel; `jupytext --to notebook tutorials/<name>.py` opens one
as a notebook.
"""

from __future__ import annotations

import pathlib
import re

from mkdocs.structure.files import File

_CELL = re.compile(r"^# %%(.*)$")


def _strip_header(lines):
  """Drops a leading jupytext YAML header (`# ---` ... `# ---`)."""
  if lines and lines[0].strip() == "# ---":
    for i in range(1, len(lines)):
      if lines[i].strip() == "# ---":
        return lines[i + 1:]
  return lines


def _uncomment(line: str) -> str:
  if line.startswith("# "):
    return line[2:]
  return "" if line.strip() == "#" else line


def percent_to_markdown(source: str, script_name: str) -> str:
  """The page for one percent-format script."""
  cells, kind, body = [], None, []
  for line in _strip_header(source.splitlines()):
    match = _CELL.match(line)
    if match:
      cells.append((kind, body))
      kind = "markdown" if "[markdown]" in match.group(1) else "code"
      body = []
    else:
      body.append(line)
  cells.append((kind, body))
  parts = []
  for kind, body in cells:
    text = "\n".join(body).strip("\n")
    if not text.strip():
      continue
    if kind == "markdown":
      parts.append("\n".join(_uncomment(l) for l in text.splitlines()))
    else:
      parts.append(f"```python\n{text}\n```")
  page = "\n\n".join(parts)
  # After the title: where the script is, and how to run it.
  note = (f"\n\n!!! note \"Run it\"\n    This page is the script "
          f"[`tutorials/{script_name}`]({script_name}): "
          f"`python tutorials/{script_name}` runs it (the test suite does), "
          f"`jupytext --to notebook tutorials/{script_name}` makes it a "
          f"notebook.\n")
  title_end = page.find("\n")
  if page.startswith("# ") and title_end > 0:
    return page[:title_end] + note + page[title_end:] + "\n"
  return note + page + "\n"


def tutorial_scripts(config_dir: pathlib.Path):
  return sorted(p for p in (config_dir / "tutorials").glob("*.py")
                if not p.name.startswith("_"))


def on_files(files, config, **kwargs):  # pylint: disable=unused-argument
  config_dir = pathlib.Path(config.config_file_path).parent
  for script in tutorial_scripts(config_dir):
    source = script.read_text(encoding="utf-8")
    files.append(File.generated(
        config, f"tutorials/{script.stem}.md",
        content=percent_to_markdown(source, script.name)))
    files.append(File.generated(
        config, f"tutorials/{script.name}", content=source))
  return files
