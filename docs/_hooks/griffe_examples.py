"""A griffe extension: kqreg's docstrings as mkdocstrings renders them best.

kqreg's docstrings put doctest lines flush left under `Example:` (doctest and
tests/test_doc_examples.py read them so). Google style wants a section's body
indented, and griffe reads a singular `Example:` as an admonition;
unindented, the lines stay text and Markdown reads `>>>` as a block quote.
This renames the header and indents each block (up to its first blank line)
once griffe has loaded the package, so the reference shows it as code. The
source files are not touched.
"""

from __future__ import annotations

import re

import griffe

_HEADER = re.compile(r"^(\s*)Examples?:\s*$")


def indent_examples(text: str) -> str:
  """`Example:` before doctest lines -> `Examples:`; flush-left ones indented.

  A flush-left block is indented up to its first blank line; an indented
  one is left as it is.
  """
  lines = text.split("\n")
  out = []
  i = 0
  while i < len(lines):
    line = lines[i]
    match = _HEADER.match(line)
    i += 1
    base = match.group(1) if match else ""
    if (not match or i == len(lines) or
        not lines[i].lstrip().startswith(">>>") or
        not lines[i].startswith(base)):
      out.append(line)
      continue
    # "Examples:" is griffe's examples section ("Example:" an admonition).
    out.append(base + "Examples:")
    if lines[i].startswith(base + ">>>"):  # flush left: indent the block
      while i < len(lines) and lines[i].strip():
        out.append(base + "    " + lines[i][len(base):])
        i += 1
  return "\n".join(out)


# `costs[i][j]` outside backticks is a Markdown reference link to "j", which
# autorefs cannot resolve (a warning, so `mkdocs build --strict` fails): such
# indexed names are shown as code instead.
_INDEXED = re.compile(r"(?<![`\w])(\w+(?:\[\w+\]){2,})(?![`\w])")


def code_indexing(text: str) -> str:
  """Puts `a[i][j]` written outside code spans and examples into backticks."""
  out = []
  for line in text.split("\n"):
    if line.lstrip().startswith((">>>", "...")):
      out.append(line)
      continue
    pieces = line.split("`")
    pieces[::2] = [_INDEXED.sub(r"`\1`", piece) for piece in pieces[::2]]
    out.append("`".join(pieces))
  return "\n".join(out)


# A package docstring lists its modules one a line, "name   what it holds"
# (indented in the source; griffe has dedented it by now);
# Markdown would run the lines into one paragraph, so they become a table.
_MODULE_LINE = re.compile(
    r"^ {0,2}([A-Za-z_]\w*(?:, [A-Za-z_]\w*)*) {2,}(\S.*)$")


def module_table(text: str) -> str:
  """Runs of two or more "name   description" lines as a Markdown table.

  A line indented deeper than the names continues the row above it.
  """
  lines = text.split("\n")
  out, i = [], 0
  while i < len(lines):
    rows, j = [], i
    while j < len(lines):
      match = _MODULE_LINE.match(lines[j])
      if match:
        rows.append(list(match.groups()))
      elif rows and lines[j].startswith("    ") and lines[j].strip():
        rows[-1][1] += " " + lines[j].strip()
      else:
        break
      j += 1
    if len(rows) < 2:
      out.append(lines[i])
      i += 1
      continue
    if out and out[-1].strip():
      out.append("")
    out += ["| module | holds |", "| --- | --- |"]
    for name, what in rows:
      names = ", ".join(f"`{n}`" for n in name.split(", "))
      out.append(f"| {names} | {what.replace('|', '&#124;')} |")
    if j < len(lines) and lines[j].strip():
      out.append("")
    i = j
  return "\n".join(out)


def _rewrite(obj, seen) -> None:
  if obj.is_alias or id(obj) in seen:
    return
  seen.add(id(obj))
  if obj.docstring is not None:
    text = code_indexing(indent_examples(obj.docstring.value))
    if obj.is_module:
      text = module_table(text)
    obj.docstring.value = text
  for member in obj.members.values():
    _rewrite(member, seen)


class IndentExamples(griffe.Extension):
  """Rewrites every docstring of a package once it is loaded."""

  def on_package(self, *, pkg, **kwargs) -> None:  # pylint: disable=unused-argument
    _rewrite(pkg, set())
