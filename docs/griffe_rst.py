"""A griffe extension for the API pages: the reStructuredText the docstrings use.

The library's docstrings are Google style with a few reStructuredText
constructs that Markdown does not know; on the API pages (and nowhere
else: the files are not changed) this extension rewrites, in every
docstring:

* cross-reference roles — ``:func:`name```, ``:class:`~a.b.C```,
  ``:mod:`.layers``` — into inline code of the name (``~`` keeps the last
  component, as Sphinx shows it);
* literal blocks — a paragraph ending in ``::`` followed by an indented
  block — into fenced code blocks;
* doctest blocks — lines starting with ``>>>`` — into fenced ``pycon``
  blocks.

Loaded by mkdocstrings (``extensions:`` in ``mkdocs.yml``).
"""
from __future__ import annotations

import re

import griffe

_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|data|attr|exc|obj|"
                   r"const|term|ref):`(~?)([^`]+)`")
_ITEM = re.compile(r"^(\s*)([*-] |\d+\. )")


def _role(match: re.Match) -> str:
  tilde, name = match.groups()
  if tilde:
    name = name.rsplit(".", 1)[-1]
  return f"`{name}`"


def _indent(line: str) -> int:
  return len(line) - len(line.lstrip())


def _content_indent(line: str) -> int:
  """Where a line's text starts (after a list marker, if any)."""
  item = _ITEM.match(line)
  return len(item.group(0)) if item else _indent(line)


def _block_indent(line: str) -> int:
  """The indentation of a block inside ``line``'s paragraph: Python-Markdown
  nests a block in a list item at the item's indentation + 4."""
  return _indent(line) + 4 if _ITEM.match(line) else _indent(line)


def _fence(block: list[str], indent: int, language: str) -> list[str]:
  strip = min(_indent(b) for b in block if b.strip())
  pad = " " * indent
  body = [pad + b[strip:] if b.strip() else "" for b in block]
  while body and not body[-1]:
    body.pop()
  return [f"{pad}```{language}", *body, f"{pad}```"]


def rewrite(text: str) -> str:
  """``text`` with roles, literal blocks and doctests made Markdown."""
  text = _ROLE.sub(_role, text)
  lines = text.split("\n")
  out: list[str] = []
  i = 0
  while i < len(lines):
    line = lines[i]
    stripped = line.strip()
    if (stripped.endswith("::") and i + 2 < len(lines)
        and not lines[i + 1].strip() and lines[i + 2].strip()
        and _indent(lines[i + 2]) > _content_indent(line)):
      j = i + 2
      block = []
      while j < len(lines) and (not lines[j].strip()
                                or _indent(lines[j]) > _content_indent(line)):
        block.append(lines[j])
        j += 1
      head = line.rstrip()[:-1]  # "text::" -> "text:", "::" alone -> ":"
      if head.strip() != ":":
        out.append(head)
      out.append("")
      out.extend(_fence(block, _block_indent(line), "python"))
      out.append("")
      i = j
      continue
    if stripped.startswith(">>>"):
      j = i
      block = []
      while j < len(lines) and lines[j].strip():
        block.append(lines[j])
        j += 1
      if out and out[-1].strip():
        out.append("")
      out.extend(_fence(block, _indent(line), "pycon"))
      i = j
      continue
    out.append(line)
    i += 1
  return "\n".join(out)


class ReStructuredText(griffe.Extension):
  """Rewrites every docstring once the package is loaded."""

  def on_package(self, *, pkg: griffe.Module, **kwargs) -> None:
    del kwargs
    self._visit(pkg, set())

  def _visit(self, obj, seen: set) -> None:
    if id(obj) in seen or obj.is_alias:
      return
    seen.add(id(obj))
    if obj.docstring is not None:
      obj.docstring.value = rewrite(obj.docstring.value)
    for member in obj.members.values():
      if not member.is_alias:
        self._visit(member, seen)
