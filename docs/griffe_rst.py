"""A griffe extension (mkdocs.yml: mkdocstrings' ``extensions``) that renders the reST bits of
shieldtune's docstrings as markdown before mkdocstrings parses them as Google style.

The docstrings are Google style (``Args:``, ``Returns:``) with a few reST habits: roles such as
``:class:`shieldtune.job.Job``` and ``::`` before a literal block. A role becomes inline code
(a cross-reference would fail the strict build wherever the target is private or outside the
API pages); ``::`` at the end of a line becomes ``:`` (the indented block after it is already a
markdown code block).
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?[a-z]+:`~?([^`]+)`")
_LITERAL_MARKER = re.compile(r"(\S)::$", re.MULTILINE)


def markdown(text: str) -> str:
    """reST roles and literal-block markers as markdown."""
    return _LITERAL_MARKER.sub(r"\1:", _ROLE.sub(r"`\1`", text))


class RstToMarkdown(griffe.Extension):
    """Rewrites every docstring once it is loaded."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = markdown(obj.docstring.value)
