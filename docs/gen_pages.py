"""Pages generated at build time (run by the mkdocs-gen-files plugin).

Nothing here is written to ``docs/``: the pages exist only in the build.

* ``reference/{tasks,datasets,models,optimizers}.md``: tables read from the
  registries, as ``python -m optbench_jax list`` reads them;
* ``reference/settings.md`` and ``reference/command-line.md``: the run
  settings (``optbench_jax/train/settings.py``) and the ``--help`` text of
  every command, from the parsers themselves;
* ``api/``: one page per module of the package, found by walking its
  directory (so a module added, moved or removed changes the pages with it);
  each page is a mkdocstrings directive, read statically by griffe;
* ``design/layout.md``: the package's modules with the first paragraph of
  each docstring (read with ``ast``, nothing imported);
* ``benchmarks/step-speed.md``: ``benchmarks/README.md``, included as it
  is, less its section of figures measured before the CPU work.
"""
from __future__ import annotations

import contextlib
import dataclasses
import inspect
import io
import os
import re
import sys
from pathlib import Path

import mkdocs_gen_files

ROOT = Path(__file__).resolve().parent.parent
# The package of this checkout, whatever else is installed.
sys.path.insert(0, str(ROOT))
PACKAGE = "optbench_jax"
# Modules left out of the API pages: the PyTorch twins import torch (a test
# and benchmark dependency), and ``python -m`` entry points have no API.
API_SKIP = ("optbench_jax.reference", "optbench_jax.__main__")

# The registries only describe themselves: no accelerator is needed (and a
# CI machine with one should not start it to build the docs).
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["COLUMNS"] = "88"  # argparse's help width, so pages are stable


def cell(value) -> str:
  """Text for a Markdown table cell."""
  text = str(value).replace("\n", " ").strip()
  return text.replace("|", "\\|") if text else "–"


def code(value) -> str:
  return f"`{value}`" if str(value) else "–"


def table(header: list[str], rows: list[list[str]]) -> str:
  lines = ["| " + " | ".join(header) + " |",
           "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
  return "\n".join(lines) + "\n"


def first_line(obj) -> str:
  doc = inspect.getdoc(obj) or ""
  return doc.strip().split("\n\n")[0].replace("\n", " ")


def write(path: str, text: str) -> None:
  with mkdocs_gen_files.open(path, "w") as f:
    f.write(text)


GENERATED = ("*Generated when the documentation is built, from {source}; "
             "`python -m optbench_jax list` prints the same registries.*\n\n")


# -- reference tables ---------------------------------------------------------
def tasks_page(tasks, data, models) -> str:
  out = ["# Tasks\n\n", GENERATED.format(source="`optbench_jax.tasks.TASKS`"),
         "What each task computes (loss, metrics, decoding) is described in "
         "[Tasks and models](../user-guide/tasks-and-models.md); a setting "
         "left unset takes the task's default below (`–`: the setting is "
         "refused for the task, or has no task default).\n\n"]
  rows = []
  for name, task in tasks.TASKS.items():
    direction = "higher" if task.higher_is_better else "lower"
    rows.append([code(name), f"`{task.primary_metric}` ({direction} is better)",
                 ", ".join(code(d) for d in data.names_for(name)),
                 ", ".join(code(m) for m in models.names_for(name))])
  out.append(table(["task", "primary metric", "datasets", "models"], rows))
  out.append("\n## Defaults\n\n")
  fields = ["default_scheduler", "default_grad_clip", "default_label_smoothing",
            "default_eval_batch_size", "default_max_length",
            "default_vocab_size", "default_target_length", "default_beam_size",
            "default_length_penalty"]
  fields = [f for f in fields
            if any(hasattr(t, f) for _, t in tasks.TASKS.items())]
  rows = [[code(name)] + [cell("–" if getattr(task, f, None) is None
                               else getattr(task, f)) for f in fields]
          for name, task in tasks.TASKS.items()]
  out.append(table(["task"] + [f.removeprefix("default_") for f in fields],
                   rows))
  out.append("\n## Modules\n\n")
  for name, task in tasks.TASKS.items():
    module = inspect.getmodule(type(task))
    out.append(f"* `{name}`: `{type(task).__module__}."
               f"{type(task).__qualname__}` — {first_line(module)}\n")
  return "".join(out)


def download_source(spec) -> str:
  """The source a dataset downloads from (Hub id and config, or TFDS
  name), linked to its card, and the split sizes the card publishes; "–"
  for no download."""
  download = getattr(spec, "download", None)
  if download is None:
    return "–"
  sizes = ", ".join(f"{split} {n:,}" for split, n in
                    download.published.items())
  return f"[`{download.label}`]({download.card}) ({sizes})"


def card_facts(spec) -> tuple[str, str]:
  """(licence, download / prepared size) its card states, for a dataset
  that downloads; dashes otherwise."""
  from optbench_jax.data import cards
  download = getattr(spec, "download", None)
  found = download and cards.facts(download.origin)
  if not found:
    return "–", "–"
  return found.licence, found.sizes()


def datasets_page(tasks, data) -> str:
  out = ["# Datasets\n\n",
         GENERATED.format(source="`optbench_jax.data` (`names_for`, `get`)"),
         "Where each dataset comes from and how to make a cached one "
         "available: [Datasets](../user-guide/datasets.md). "
         "Augmentation: the random training augmentation the dataset "
         "entry names (on the device, inside the compiled epoch). Licence "
         "and size (download / prepared, MB): as the dataset's card "
         "states them (`optbench_jax/data/cards.py` names each card read; "
         "the Hub's Parquet copies differ in size).\n\n"]
  for task in tasks.TASKS.names():
    out.append(f"## `{task}`\n\n")
    rows = []
    for name in data.names_for(task):
      spec = data.get(task, name)
      augment = getattr(spec, "augment", None)
      defaults = getattr(spec, "defaults", None) or {}
      rows.append([code(name), getattr(spec, "description", ""),
                   download_source(spec), *card_facts(spec),
                   code(augment.__name__) if augment else "–",
                   ", ".join(f"`{k}={v}`" for k, v in defaults.items())
                   or "–"])
    out.append(table(["dataset", "description",
                      "downloaded from (published split sizes)", "licence",
                      "size (card)", "augmentation", "setting defaults"],
                     rows) + "\n")
  return "".join(out)


def models_page(tasks, models) -> str:
  out = ["# Models\n\n",
         GENERATED.format(source="`optbench_jax.models` (`names_for`, "
                          "`get`)"),
         "Layouts and the measured agreement with each PyTorch twin: "
         "[Tasks and models](../user-guide/tasks-and-models.md#models). "
         "Example input: the entry's `example_info`, the shape the tests and "
         "`benchmarks/step_speed.py` use. `--width w` multiplies the fields "
         "of the last column (`ModelSpec.widths`) by `w`.\n\n"]
  rows = []
  for task in tasks.TASKS.names():
    for name in models.names_for(task):
      spec = models.get(task, name)
      info = spec.example_info
      example = f"{info.name}: {tuple(info.input_shape)}" \
          if getattr(info, "input_shape", None) else info.name
      if getattr(info, "num_classes", None):
        example += f", {info.num_classes} classes"
      widths = ", ".join(code(f) for f in spec.widths) or "–"
      rows.append([code(name), code(task), spec.description, example,
                   "yes" if spec.torch_twin is not None else "no",
                   "yes" if getattr(spec, "pretrained", None) else "–",
                   widths])
  out.append(table(["model", "task", "description", "example input",
                    "PyTorch twin", "pretrained weights",
                    "`--width` scales"], rows))
  return "".join(out)


def public_name(fn) -> str:
  """``optax.adam`` rather than ``optax._src.alias.adam``."""
  if fn is None:
    return ""
  import optax  # pylint: disable=import-outside-toplevel
  for module, prefix in ((optax, "optax"),
                         (getattr(optax, "contrib", None), "optax.contrib")):
    if module is not None and getattr(module, fn.__name__, None) is fn:
      return f"{prefix}.{fn.__name__}"
  return f"{fn.__module__}.{fn.__qualname__}"


def optimizers_page(transforms) -> str:
  specs = transforms.available()
  out = ["# Optimizers\n\n",
         GENERATED.format(source="`optbench_jax.transforms.available()`"),
         "How to use them, how weight decay reaches each rule, where the "
         "papers', optax's and PyTorch's defaults differ and the measured "
         "agreement with each reference: "
         "[Optimizers](../user-guide/optimizers.md). `needs`: the extras the "
         "engine passes to `update` beyond the gradient "
         "(`optbench_jax/transforms/base.py`). `default weight decay`: "
         "what a run without `--weight-decay` (and `make` without "
         "`weight_decay`) uses, the default of the entry's PyTorch "
         "reference (0 where the reference has none); a wrapper's is its "
         "base's (`transforms.default_weight_decay`).\n\n"]
  rows = []
  for name, spec in specs.items():
    optax_name = public_name(getattr(spec, "optax_function", None))
    decay = f"{transforms.default_weight_decay(name):g}"
    if spec.weight_decay == "base":
      decay += f" (base {code(spec.hyperparameters['base'])})"
    rows.append([code(name), spec.family, f"{spec.default_lr:g}",
                 spec.weight_decay, decay,
                 ", ".join(sorted(spec.needs)) or "–",
                 spec.paper, code(spec.reference) if spec.reference else "–",
                 code(optax_name) if optax_name else "–"])
  out.append(table(["name", "family", "default LR", "weight decay",
                    "default weight decay", "needs", "paper", "PyTorch reference",
                    "optax function"], rows))
  out.append("\n## Hyperparameter defaults\n\n"
             "The keywords of `make(name, ...)` beyond `learning_rate`, "
             "`weight_decay` and `exclude_bias_norm`, with their defaults "
             "(the factory's signature, `spec.hyperparameters`); the mask "
             "keywords that `--exclude-bias-norm` sets (`spec.masks`).\n\n")
  rows = []
  for name, spec in specs.items():
    hyper = ", ".join(f"`{k}={v!r}`" for k, v in spec.hyperparameters.items())
    masks = ", ".join(f"{role}: `{kw}`" for role, kw in spec.masks.items())
    rows.append([code(name), hyper or "–", masks or "–"])
  out.append(table(["name", "hyperparameters", "masks"], rows))
  out.append("\n## Search spaces\n\n"
             "What tuning samples for each optimizer (`spec.search_space`, "
             "`optbench_jax/transforms/search.py`): each dimension's "
             "distribution and the source of its range.\n\n")
  rows = []
  for name, spec in specs.items():
    for key, dim in spec.search_space.items():
      rows.append([code(name), code(key), dim.describe(), dim.source])
  out.append(table(["name", "dimension", "distribution", "source"], rows))
  return "".join(out)


def settings_page(settings) -> str:
  out = ["# Run settings\n\n",
         "*Generated when the documentation is built, from "
         "`optbench_jax/train/settings.py`, where each setting is declared "
         "once: its flag, default, help and whether it changes a run's "
         "numbers (a run is resumed only when every setting that does "
         "equals the stored one).*\n\n"]
  for cls, intro in (
      (settings.CampaignConfig,
       "Flags of `python -m optbench_jax run` (fields of `CampaignConfig`; "
       "the `Protocol` part is shared by every run of a campaign)."),
      (settings.RunConfig,
       "Settings of one run that have no flag (fields of `RunConfig` "
       "without one: the campaign sets them per run).")):
    out.append(f"## `{cls.__name__}`\n\n{intro}\n\n")
    rows = []
    for field in settings.fields(cls):
      flag = settings.flag_of(field)
      if (flag is None) != (cls is settings.RunConfig):
        continue
      if field.default is not dataclasses.MISSING:
        default = repr(field.default)
      elif field.default_factory is not dataclasses.MISSING:
        default = repr(field.default_factory())
      else:
        default = "required"
      rows.append([code(flag or field.name), code(default),
                   "yes" if field.metadata.get("numeric") else "no",
                   field.metadata.get("help", "")])
    out.append(table(["setting", "default", "changes results", "help"], rows)
               + "\n")
  return "".join(out)


def _subparsers(parser):
  for action in parser._actions:  # pylint: disable=protected-access
    choices = getattr(action, "choices", None)
    if isinstance(choices, dict):
      return choices
  return {}


def command_line_page(cli, experiment) -> str:
  out = ["# Command line\n\n",
         "*Generated when the documentation is built: the `--help` text of "
         "each command, from its parser.*\n\n"
         "How to use them: [Running](../user-guide/run.md), "
         "[Campaigns](../campaigns.md), [Analysis and reports]"
         "(../analysis.md).\n\n"]
  parser = cli.build_parser()
  out.append(f"## `python -m optbench_jax`\n\n```text\n"
             f"{parser.format_help()}```\n\n")
  for name, sub in _subparsers(parser).items():
    out.append(f"## `python -m optbench_jax {name}`\n\n```text\n"
               f"{sub.format_help()}```\n\n")
  script = experiment.build_parser("thesis_campaign.py")
  out.append("## Campaign scripts (`experiments/*.py`)\n\n"
             "The shared command line of every script in `experiments/` "
             "(`optbench_jax/experiment.py`), shown for "
             "`experiments/thesis_campaign.py`; a script may add its own "
             "flags (`python experiments/SCRIPT.py --help`).\n\n"
             f"```text\n{script.format_help()}```\n")
  return "".join(out)


def reference_pages() -> None:
  with contextlib.redirect_stdout(io.StringIO()):
    import optbench_jax  # pylint: disable=import-outside-toplevel
    from optbench_jax import cli, data, experiment, models, tasks, transforms  # pylint: disable=import-outside-toplevel
    from optbench_jax.train import settings  # pylint: disable=import-outside-toplevel
  del optbench_jax
  write("reference/tasks.md", tasks_page(tasks, data, models))
  write("reference/datasets.md", datasets_page(tasks, data))
  write("reference/models.md", models_page(tasks, models))
  write("reference/optimizers.md", optimizers_page(transforms))
  write("reference/settings.md", settings_page(settings))
  write("reference/command-line.md", command_line_page(cli, experiment))


# -- API pages ----------------------------------------------------------------
def modules() -> list[str]:
  """Every module of the package, found on disk (nothing is imported)."""
  names = []
  for path in sorted((ROOT / PACKAGE).rglob("*.py")):
    parts = path.relative_to(ROOT).with_suffix("").parts
    if any(p == "__pycache__" for p in parts):
      continue
    if parts[-1] == "__init__":
      parts = parts[:-1]
    # Only modules of packages (every folder on the way has __init__.py).
    if not all((ROOT.joinpath(*parts[:i]) / "__init__.py").exists()
               for i in range(1, len(parts))):
      continue
    name = ".".join(parts)
    if any(name == s or name.startswith(s + ".") for s in API_SKIP):
      continue
    names.append(name)
  return sorted(set(names))


START_WITH = (
    ("optbench_jax.transforms", "`make`, `available`: the optimizers"),
    ("optbench_jax.campaign", "`run_campaign`"),
    ("optbench_jax.train.settings", "every run setting"),
    ("optbench_jax.analysis.restore", "a finished run rebuilt"),
)


def api_pages() -> None:
  names = modules()
  index = ["# API reference\n\n",
           "*Generated when the documentation is built: one page per module "
           "of `optbench_jax`, found by walking the package, rendered from "
           "the docstrings by mkdocstrings (read statically: nothing is "
           "imported). Left out: `optbench_jax.reference` (the PyTorch "
           "twins, which need torch) and `optbench_jax.__main__`.*\n\n"]
  start = [f"[`{name}`]({name.replace('.', '/')}.md) ({what})"
           for name, what in START_WITH if name in names]
  if start:
    index.append("Start with " + ", ".join(start) + ".\n\n")
  for name in names:
    page = "api/" + name.replace(".", "/") + ".md"
    write(page, f"::: {name}\n")
    depth = name.count(".")
    label = name if depth == 0 else name.rsplit(".", 1)[-1]
    indent = "    " * depth
    index.append(f"{indent}* [`{label}`]({page.removeprefix('api/')})\n")
  write("api/index.md", "".join(index))


# -- package layout -------------------------------------------------------------
FOLDERS = (
    ("optbench_jax/", "the library (below)"),
    ("experiments/", "campaign scripts (thesis_campaign, warwick_cifar100, "
     "lr_sensitivity, test_functions): [Campaigns](../campaigns.md)"),
    ("benchmarks/", "speed measurements beside PyTorch: "
     "[Benchmarks](../benchmarks/index.md)"),
    ("tests/", "one folder per package (`python -m pytest`)"),
    ("docs/", "these pages, an example campaign and its report"),
)


def summary(path: Path) -> str:
  """The first paragraph of a module's docstring, read without importing."""
  import ast  # pylint: disable=import-outside-toplevel
  try:
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
  except SyntaxError:
    return ""
  return (doc or "").strip().split("\n\n")[0].replace("\n", " ")


def layout_page() -> None:
  out = ["# Package layout\n\n",
         "*Generated when the documentation is built: the repository's "
         "folders, and every package and module of `optbench_jax` with the "
         "first paragraph of its docstring (read from the files, so the "
         "list follows the code). Lower layers never import higher ones.*"
         "\n\n"]
  rows = [[code(folder), text] for folder, text in FOLDERS
          if (ROOT / folder).is_dir()]
  out.append(table(["folder", "what"], rows))
  out.append("\n## `optbench_jax`\n\n")
  package = ROOT / PACKAGE
  for path in sorted(package.glob("*.py")):
    if path.stem != "__init__":
      out.append(f"* `{path.name}`: {summary(path) or '–'}\n")
  for sub in sorted(p for p in package.iterdir()
                    if (p / "__init__.py").exists()):
    out.append(f"\n### `{PACKAGE}/{sub.name}/`\n\n"
               f"{summary(sub / '__init__.py')}\n\n")
    for path in sorted(sub.glob("*.py")):
      if path.stem != "__init__":
        out.append(f"* `{path.name}`: {summary(path) or '–'}\n")
  write("design/layout.md", "".join(out))


# -- benchmarks/README.md ------------------------------------------------------
LEFT_OUT = "Measured figures"


def step_speed_page() -> None:
  text = (ROOT / "benchmarks" / "README.md").read_text(encoding="utf-8")
  lines = text.splitlines(keepends=True)
  if lines and lines[0].startswith("# "):
    lines = lines[1:]
  kept, skipping, level, fence = [], False, 0, False
  for line in lines:
    if line.lstrip().startswith("```"):
      fence = not fence
    heading = None if fence else re.match(r"(#+) (.*)", line)
    if heading and skipping and len(heading.group(1)) <= level:
      skipping = False
    if heading and heading.group(2).strip() == LEFT_OUT:
      skipping, level = True, len(heading.group(1))
      kept.append(
          f"{heading.group(1)} {LEFT_OUT}\n\n"
          "Left out of this page: the file's CPU figures were measured "
          "before the CPU work of commit 70016bd (convolution gradients, "
          "Eigen convolutions, max pooling) and no longer describe the "
          "code. Current figures, each with its machine and command: "
          "[Benchmarks](index.md).\n\n")
    if not skipping:
      kept.append(line)
  write("benchmarks/step-speed.md",
        "# `benchmarks/step_speed.py`\n\n"
        "*Included from `benchmarks/README.md` when the documentation is "
        "built (edit that file, not this page), less its section of "
        "measured figures. The FLOP counts and first-step losses quoted in "
        "the notes below were seen on the project's 2-core CPU (AMD EPYC "
        "VM, jax 0.10.2, torch 2.13.0+cpu) in the runs of that section; "
        "current speed figures: [Benchmarks](index.md).*\n\n"
        + "".join(kept))


reference_pages()
api_pages()
layout_page()
step_speed_page()
