"""MkDocs hook: demote known, reported docstring-parser warnings to INFO in strict builds.

``mkdocs build --strict`` fails on any warning, including those of the numpy docstring
parser (griffe). A docstring problem in the package is fixed in the package, not here; until
it is, the exact warning can be listed in :data:`KNOWN` (file plus a fragment of the message)
so that the rest of the documentation keeps its strict check. Every other warning still
fails the build. Docstring options cannot be set per page: griffe parses the whole package
once, with the global options.
"""

from __future__ import annotations

import logging

#: (source location prefix, message fragment) of warnings to demote, with the reason.
KNOWN: tuple[tuple[str, str], ...] = ()

LOGGERS = ("mkdocs.plugins.griffe", "griffe")


class _DemoteKnown(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.WARNING:
            msg = record.getMessage()
            if any(loc in msg and frag in msg for loc, frag in KNOWN):
                record.levelno, record.levelname = logging.INFO, "INFO"
        return True


_FILTER = _DemoteKnown()


def on_startup(command, dirty) -> None:  # noqa: ARG001 - MkDocs hook API
    for name in LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
