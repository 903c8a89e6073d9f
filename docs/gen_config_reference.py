"""The configuration reference page, generated from the config schema so it cannot drift.

Every section of :class:`shieldtune.config.Config` becomes a table: each key with its type
(``typing.get_type_hints``), its default (the dataclass default or ``default_factory``, as
YAML), what it accepts (the field's ``range``, ``choices`` or ``pattern`` metadata, exactly as
the validator checks it) and its description (the ``#:`` comment lines above the field in
``src/shieldtune/config.py``, read with ``inspect.getsource`` and ``ast``).

Two ways in:

* mkdocs loads this file as a hook (``hooks:`` in mkdocs.yml): ``on_files`` adds the page
  ``reference/config.md`` to the site at build time; nothing is written to disk.
* ``python docs/gen_config_reference.py [OUT]`` prints the page (or writes it to ``OUT``), and
  tests/test_docs.py imports :func:`reference_rows` and :func:`render` to check the page.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
import sys
import textwrap
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from shieldtune import config as schema

#: Where the page lands in the site (mkdocs.yml's nav names it).
PAGE = "reference/config.md"
#: Defaults longer than this are shown in a YAML block under their section's table.
LONG_DEFAULT = 60


@dataclass(frozen=True)
class Row:
    """One config key as the reference shows it."""

    key: str  # dotted: ``safety.confidence``; list entries: ``env.search_space[].name``
    type: str
    default: Any  # the real default value (plain data: dataclasses as dicts)
    allowed: str  # markdown: a range, the choices or the pattern; "" when anything of the type
    description: str  # markdown, from the ``#:`` comments


@dataclass(frozen=True)
class Section:
    name: str  # ``safety``, or ``env.search_space[]`` for the entries of a list of dataclasses
    cls: type
    summary: str
    rows: tuple[Row, ...]


def _markdown(text: str) -> str:
    """reST-ish source text as markdown: ``literal`` -> `literal`, :role:`x` -> `x`."""
    text = re.sub(r":[a-z]+:`~?([^`]+)`", r"`\1`", text)
    return text.replace("``", "`")


def field_comments(cls: type) -> dict[str, str]:
    """The ``#:`` comment lines directly above each field of ``cls``, joined into one text."""
    source = textwrap.dedent(inspect.getsource(cls))
    lines = source.splitlines()
    (node,) = ast.parse(source).body
    assert isinstance(node, ast.ClassDef)
    out: dict[str, str] = {}
    for stmt in node.body:
        if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
            continue
        comment: list[str] = []
        i = stmt.lineno - 2  # the line above the field (lineno is 1-based)
        while i >= 0 and lines[i].strip().startswith("#:"):
            comment.insert(0, lines[i].strip()[2:].strip())
            i -= 1
        out[stmt.target.id] = " ".join(comment)
    return out


def class_summary(cls: type) -> str:
    """The class's own docstring (not the signature dataclasses put in ``__doc__``)."""
    (node,) = ast.parse(textwrap.dedent(inspect.getsource(cls))).body
    assert isinstance(node, ast.ClassDef)
    return _markdown(ast.get_docstring(node) or "")


def type_name(annotation: Any) -> str:
    """An annotation as a reader writes it: ``int | null``, ``list[str]``."""
    if annotation is type(None):
        return "null"
    if annotation is Any:
        return "any"
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in typing.get_args(annotation))
    if origin in (list, dict):
        args = ", ".join(type_name(a) for a in typing.get_args(annotation))
        return f"{origin.__name__}[{args}]"
    return getattr(annotation, "__name__", str(annotation))


def _default(f: dataclasses.Field) -> Any:
    factory = f.default_factory
    value = factory() if factory is not dataclasses.MISSING else f.default
    if isinstance(value, list):
        return [dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for v in value]
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value


def _number(value: float | int) -> str:
    return f"{value:g}" if isinstance(value, float) and abs(value) < 1e-3 else str(value)


def allowed(f: dataclasses.Field) -> str:
    """What the validator accepts beyond the type, from the field's metadata."""
    meta = f.metadata
    if "range" in meta:
        lo, hi = meta["range"]
        if lo is not None and hi is not None:
            return f"[{_number(lo)}, {_number(hi)}]"
        return f">= {_number(lo)}" if lo is not None else f"<= {_number(hi)}"
    if "choices" in meta:
        return ", ".join(f"`{c}`" for c in meta["choices"])
    if "pattern" in meta:
        regex, example = meta["pattern"]
        return f"matches `{regex.pattern}`, e.g. `{example}`"
    return ""


def _list_item_class(annotation: Any) -> type | None:
    if typing.get_origin(annotation) is list:
        (item,) = typing.get_args(annotation)
        if dataclasses.is_dataclass(item):
            return item
    return None


def _section(name: str, cls: type) -> tuple[Section, list[Section]]:
    hints = typing.get_type_hints(cls)
    comments = field_comments(cls)
    rows, nested = [], []
    for f in dataclasses.fields(cls):
        annotation = hints[f.name]
        key = f"{name}.{f.name}"
        item = _list_item_class(annotation)
        text = _markdown(comments.get(f.name, ""))
        if item is not None:
            entries = f"{name}.{f.name}[]"
            link = f"see [`{entries}`](#{_anchor(entries)})"
            text = (text + " " if text else "") + f"A list of entries: {link}."
            inner, _ = _section(entries, item)
            nested.append(inner)
        rows.append(Row(key, type_name(annotation), _default(f), allowed(f), text))
    return Section(name, cls, class_summary(cls), tuple(rows)), nested


def sections() -> list[Section]:
    """Every section of the config, in schema order; list-of-dataclass entries follow their
    section."""
    out: list[Section] = []
    for f in dataclasses.fields(schema.Config):
        cls = typing.get_type_hints(schema.Config)[f.name]
        section, nested = _section(f.name, cls)
        out.append(section)
        out.extend(nested)
    return out


def reference_rows() -> list[Row]:
    """Every key of the reference (sections' keys and list entries' keys), in page order."""
    return [row for section in sections() for row in section.rows]


def default_yaml(value: Any) -> str:
    """A default as YAML, the way a config file or ``--set`` writes it."""
    text = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=10**6)
    return text.removesuffix("\n").removesuffix("\n...")


def _anchor(heading: str) -> str:
    """The id mkdocs' toc extension gives a heading (its default slugify)."""
    slug = re.sub(r"[^\w\s-]", "", heading).strip().lower()
    return re.sub(r"[-\s]+", "-", slug)


def _cell(text: str) -> str:
    """Text for a table cell: pipes outside code spans escaped (inside them Python-Markdown's
    tables keep them as they are)."""
    parts = re.split(r"(`[^`]*`)", text.replace("\n", " "))
    return "".join(p if p.startswith("`") else p.replace("|", "\\|") for p in parts)


def render() -> str:
    """The whole page (markdown)."""
    parts = [
        "# Configuration reference",
        "",
        "Every key of a shieldtune config: its type, its default, what it accepts and what it "
        "does. This page is generated at build time from the schema in "
        "`src/shieldtune/config.py` (by `docs/gen_config_reference.py`), so it always says "
        "what the code checks.",
        "",
        "A config is YAML with one mapping per section; every key is optional and an omitted "
        "key takes the default below. `configs/mnist-cnn.yaml` spells out every key. On the "
        "command line, `--set section.key=value` overrides any key (the value is YAML, so "
        "lists work: `--set 'safety.constraints=[fgsm_robust_acc >= 0.7]'`). A value outside "
        "what a key accepts stops the job before any work with one line naming the key, the "
        "value and what is allowed (exit status 2). Checks that involve the task (its "
        "metrics, hyperparameters and data) run when the job is resolved against it.",
        "",
        "In the tables, *type* `X | null` means the key may be `null`; *accepts* is the range "
        "(inclusive), the choices or the pattern the value must match; an empty cell accepts "
        "any value of the type.",
        "",
    ]
    for section in sections():
        parts += [f"## {section.name}", ""]
        if section.summary:
            parts += [section.summary, ""]
        parts += ["| key | type | default | accepts | description |", "|---|---|---|---|---|"]
        long_defaults = []
        for row in section.rows:
            shown = default_yaml(row.default)
            if len(shown) > LONG_DEFAULT:
                long_defaults.append((row, shown))
                default_cell = "see below"
            else:
                default_cell = f"`{shown}`"
            parts.append(
                f"| `{row.key}` | `{_cell(row.type)}` | {_cell(default_cell)} | "
                f"{_cell(row.allowed)} | {_cell(row.description)} |"
            )
        parts.append("")
        for row, _ in long_defaults:
            block = yaml.safe_dump(
                {row.key.rsplit(".", 1)[1]: row.default}, sort_keys=False, width=100
            )
            parts += [f"Default of `{row.key}`:", "", "```yaml", block.rstrip(), "```", ""]
    return "\n".join(parts)


def on_files(files: Any, config: Any) -> Any:
    """mkdocs hook: add the generated page to the site."""
    from mkdocs.structure.files import File

    files.append(File.generated(config, PAGE, content=render()))
    return files


if __name__ == "__main__":
    page = render()
    if len(sys.argv) > 1:
        Path(sys.argv[1]).write_text(page, encoding="utf-8")
    else:
        sys.stdout.write(page)
