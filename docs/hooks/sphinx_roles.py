"""MkDocs hook: show Sphinx cross-reference roles of the docstrings as plain inline code.

The package docstrings are numpy style with Sphinx roles (``:class:`~bayesinv.Posterior```,
``:math:`\\gamma```). mkdocstrings renders the backticked part as ``<code>`` and leaves the
role name in front of it (``:class:<code>~bayesinv.Posterior</code>``). This hook drops the
role name and, as Sphinx does, shortens ``~a.b.C`` to ``C``; the text is otherwise unchanged.
"""

from __future__ import annotations

import re

_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|data|attr|obj|exc|math|ref|doc):<code>(~?)([^<]*)</code>")


def _sub(m: re.Match[str]) -> str:
    tilde, target = m.group(1), m.group(2)
    if tilde:
        target = target.rsplit(".", 1)[-1]
    return f"<code>{target}</code>"


def on_page_content(html: str, page, config, files) -> str:  # noqa: ARG001 - MkDocs hook API
    return _ROLE.sub(_sub, html)
