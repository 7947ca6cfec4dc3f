"""Command-line settings, declared once: flag, default, help, parsing, check.

Every command and script declares its settings as the fields of a frozen
dataclass, each made by :func:`setting` (its default, help text, how the
command line parses it and which values are valid). From these fields
:func:`add_flags` generates the argparse flags, every default shown in
``--help``; :func:`from_args` builds the dataclass from the parsed
arguments; and :func:`check` validates every field against its declared
choices and check, with one-line errors naming the flag, for the command
line and the Python API alike, before anything is loaded.

``train/settings.py`` declares ``run``'s settings this way;
``analysis/analyze.py`` those of ``analyze``, ``cli.py`` those of
``report`` and of ``run``'s process options, ``experiment.py`` the flags
every experiment script shares, and each script its own.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
import sys
import typing
from typing import Any, Callable, Mapping, Optional, Sequence

from optbench_jax.errors import OptBenchError

Check = Callable[[Any], Optional[str]]
# Seeds are unsigned 32-bit integers (as PyTorch's and NumPy's generators).
MAX_SEED = 2**32 - 1


def setting(default: Any = dataclasses.MISSING, help: str = "", *,  # pylint: disable=redefined-builtin
            parse: Optional[Callable[[str], Any]] = None,
            flag: Optional[str] = "", choices: Optional[Callable[[], Sequence]] = None,
            check: Optional[Check] = None, numeric: bool = True,
            factory: Optional[Callable[[], Any]] = None):
  """A dataclass field that is a setting.

  Args:
    default: the default (omit for a required setting).
    help: the command line's help text; ``--help`` adds ``(default: ...)``
      unless the text already says it (``default:`` or ``(default)``), as
      it must where the default is None.
    parse: turns the flag's text into the value (default: the field's type).
    flag: the command-line flag; ``""`` derives ``--name-with-dashes``;
      ``None`` means a setting of the Python API only.
    choices: ``() -> valid values``, checked by :func:`check`.
    check: ``value -> error text or None``, checked by :func:`check` (not
      called for None). The text follows the flag's name (``must be at
      least 1 (got 0)``), unless it starts with the flag or ``:``.
    numeric: whether the setting changes a run's numbers (results); settings
      that only change where or how fast results are computed do not.
    factory: a default factory (mutable defaults).
  """
  metadata = {"help": help, "parse": parse, "flag": flag, "choices": choices,
              "check": check, "numeric": numeric}
  if factory is not None:
    return dataclasses.field(default_factory=factory, metadata=metadata)
  return dataclasses.field(default=default, metadata=metadata)


# -- value checks --------------------------------------------------------------
def at_least(minimum: float) -> Check:
  def check(value):
    if value is not None and value < minimum:
      return f"must be at least {minimum:g} (got {value})"
    return None
  return check


def fraction(value) -> Optional[str]:
  if not 0.0 < value < 1.0:
    return f"must be in (0, 1) (got {value})"
  return None


def non_negative(value) -> Optional[str]:
  if value is not None and not (math.isfinite(value) and value >= 0):
    return f"must be a finite number ≥ 0 (got {value})"
  return None


def positive_finite(value) -> Optional[str]:
  if value is not None and not (math.isfinite(value) and value > 0):
    return f"must be a positive finite number (got {value})"
  return None


def seed_value(value) -> Optional[str]:
  if not 0 <= value <= MAX_SEED:
    return f"must be an integer in [0, {MAX_SEED}] (got {value})"
  return None


def not_empty(value) -> Optional[str]:
  if value is not None and not str(value).strip():
    return "must not be empty"
  return None


def directory(value) -> Optional[str]:
  """A directory, existing or to be made: neither the path nor a folder
  above it is a file (pure: nothing is created)."""
  if value is None:
    return None
  path = os.path.abspath(os.path.expanduser(value))
  probe = path
  while not os.path.exists(probe):
    parent = os.path.dirname(probe)
    if parent == probe:
      break
    probe = parent
  if os.path.isdir(probe):
    return None
  if probe == path:
    return f"{value} is an existing file; give a directory"
  return f"{value} is below {probe}, which is a file; give a directory"


def existing_directory(value) -> Optional[str]:
  if value is not None and not os.path.isdir(os.path.expanduser(value)):
    return f"{value}: no such directory"
  return None


def all_of(*checks: Check) -> Check:
  """The first error of ``checks``, in order."""
  def check(value):
    for test in checks:
      message = test(value)
      if message:
        return message
    return None
  return check


def each(test: Check) -> Check:
  """``test`` on every item of a list: ``--flag: item message``."""
  def check(values):
    for value in values:
      message = test(value)
      if message:
        return f": {value} {message}"
    return None
  return check


# -- parsers -------------------------------------------------------------------
def optional_int(text: str) -> Optional[int]:
  """An integer, or ``none``/``all`` for no value."""
  return None if text.lower() in ("none", "all") else int(text)


def auto_int(text: str) -> Optional[int]:
  return None if text.lower() in ("auto", "all") else int(text)


def number_list(kind, flag):
  def parse(text: str):
    try:
      values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
      raise ValueError(f"{flag} expects a comma-separated list "
                       f"(got {text!r})") from None
    if not values:
      raise ValueError(f"{flag} is empty")
    return values
  return parse


# -- naming --------------------------------------------------------------------
def fields(cls) -> list[dataclasses.Field]:
  return list(dataclasses.fields(cls))


def flag_of(field: dataclasses.Field) -> Optional[str]:
  flag = field.metadata.get("flag", "")
  if flag is None:
    return None
  return flag or "--" + field.name.replace("_", "-")


def default_of(field: dataclasses.Field) -> Any:
  """The field's default (``dataclasses.MISSING`` for a required one)."""
  if field.default_factory is not dataclasses.MISSING:
    return field.default_factory()
  return field.default


def fail(field: dataclasses.Field, message: str) -> OptBenchError:
  """The one-line error of ``field``'s check ``message``."""
  name = flag_of(field) or field.name
  if message.startswith(name):
    return OptBenchError(message)
  return OptBenchError(f"{name}{'' if message.startswith(':') else ' '}"
                       f"{message}")


def check(options) -> None:
  """Every field of the dataclass ``options`` against its declared choices
  and check; the first failure raises a one-line ``OptBenchError`` naming
  the flag. Pure: what a value is, not what it finds (no data, no device;
  a path is only looked at)."""
  for field in dataclasses.fields(options):
    value = getattr(options, field.name)
    if value is None:
      continue
    choices = field.metadata.get("choices")
    if choices is not None and value not in choices():
      raise OptBenchError(f"unknown {flag_of(field) or field.name} "
                          f"{value!r}; valid: {', '.join(choices())}")
    test = field.metadata.get("check")
    message = test(value) if test is not None else None
    if message:
      raise fail(field, message)


# -- argparse ------------------------------------------------------------------
class Parser(argparse.ArgumentParser):
  """argparse with one-line errors (``error: ...``, exit status 2), as for
  every other bad input; ``--help`` shows the usage."""

  def error(self, message):
    print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
    raise SystemExit(2)


_SCALARS = {"int": int, "float": float, "str": str}


def _typed(flag: str, kind: str, parse):
  """argparse type: the setting's parser, its errors as argparse errors."""
  def convert(text: str):
    try:
      return parse(text)
    except ValueError as e:
      message = str(e) if str(e).startswith("--") else (
          f"{flag} expects {kind} (got {text!r})")
      raise argparse.ArgumentTypeError(message) from None
  return convert


def _kind(field: dataclasses.Field) -> str:
  """The field's type as text, ``Optional[...]`` taken off."""
  kind = field.type
  if not isinstance(kind, str):  # a module without postponed annotations
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    if typing.get_origin(kind) is typing.Union and len(args) == 1:
      kind = args[0]
    kind = getattr(kind, "__name__", str(kind))
  return re.sub(r"^Optional\[(.*)\]$", r"\1", kind)


def shown(value: Any) -> str:
  """A default as ``--help`` shows it."""
  if isinstance(value, float):
    return f"{value:g}"
  if isinstance(value, (list, tuple)):
    return ",".join(shown(v) for v in value) or "none"
  if isinstance(value, Mapping):
    return ",".join(f"{k}={shown(v)}" for k, v in value.items()) or "none"
  if value is None:
    return "none"
  return str(value)


_SAYS_DEFAULT = re.compile(r"\bdefault[:)]")


def help_text(field: dataclasses.Field, default: Any) -> str:
  """The field's help with its default, as ``--help`` prints it."""
  text = field.metadata.get("help", "")
  if (default is not dataclasses.MISSING and _kind(field) != "bool"
      and not _SAYS_DEFAULT.search(text)):
    text = f"{text} (default: {shown(default)})"
  return text


def add_flags(parser: argparse.ArgumentParser, cls, *,
              defaults: Optional[Mapping[str, Any]] = None,
              group: Optional[tuple[str, str]] = None) -> None:
  """One flag per field of the dataclass ``cls`` that has one.

  Args:
    parser: where the flags go.
    cls: the settings' dataclass.
    defaults: other defaults than the fields' (e.g. a script's own output
      directory), by field name.
    group: ``(title, description)`` of an argument group to hold them.
  """
  target = parser if group is None else parser.add_argument_group(*group)
  for field in fields(cls):
    flag = flag_of(field)
    if flag is None:
      continue
    default = (defaults or {}).get(field.name, default_of(field))
    kwargs = {"dest": field.name,
              "help": help_text(field, default).replace("%", "%%")}
    kind = _kind(field)
    if kind == "bool":
      action = argparse.BooleanOptionalAction if default else "store_true"
      target.add_argument(flag, action=action, default=bool(default),
                          **kwargs)
      continue
    parse = field.metadata.get("parse") or _SCALARS.get(kind, str)
    if default is dataclasses.MISSING:
      kwargs["required"] = True
    else:
      kwargs["default"] = default
    target.add_argument(flag, type=_typed(flag, kind, parse), **kwargs)


def from_args(cls, args: argparse.Namespace):
  """The dataclass ``cls`` from parsed arguments (its flags' values; the
  fields without a flag keep their defaults)."""
  return cls(**{f.name: getattr(args, f.name) for f in fields(cls)
                if flag_of(f) is not None and hasattr(args, f.name)})


_NEGATIVE_NUMBER = re.compile(r"-(\d|\.\d|inf|nan)", re.IGNORECASE)


def _value_flags(parser: argparse.ArgumentParser) -> set[str]:
  """The flags of ``parser`` and of its subcommands that take a value."""
  found = {flag for flag, action in parser._option_string_actions.items()  # pylint: disable=protected-access
           if action.nargs is None}
  for action in parser._actions:  # pylint: disable=protected-access
    if isinstance(action, argparse._SubParsersAction):  # pylint: disable=protected-access
      for sub in action.choices.values():
        found |= _value_flags(sub)
  return found


def attach_values(argv: Sequence[str], parser) -> list[str]:
  """``--seeds -1,2`` → ``--seeds=-1,2``: a value that starts with ``-``
  (``-4``, ``-1/2``) is parsed, then judged, instead of being taken for an
  unknown flag."""
  takes_value = _value_flags(parser)
  out = []
  for arg in argv:
    if out and out[-1] in takes_value and _NEGATIVE_NUMBER.match(arg):
      out[-1] = f"{out[-1]}={arg}"
    else:
      out.append(arg)
  return out
