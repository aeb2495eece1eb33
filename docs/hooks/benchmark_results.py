"""MkDocs hook: inline ``benchmarks/results/*.md`` into the benchmarks page at build time.

The page ``benchmarks.md`` holds the marker ``<!-- benchmark-results -->``; this hook replaces
it with every ``benchmarks/results/*.md`` (sorted by name), each under its own heading. When
the folder or the files are absent (a fresh clone before any benchmark ran), a short note is
shown instead, so ``mkdocs build --strict`` passes either way.

A snippet include (``pymdownx.snippets``) would need every file name written into the page
and cannot glob; this hook can, and it also keeps the included files' links valid in a strict
build: headings are demoted below the page title, relative images (PNG/JPEG/SVG/GIF) are
embedded as ``data:`` URIs (nothing outside ``docs/`` is copied into the site), and other
relative links become plain file paths.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path

MARKER = "<!-- benchmark-results -->"
PAGE = "benchmarks.md"
RESULTS = Path("benchmarks") / "results"

_MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml",
         ".gif": "image/gif"}
_LINK = re.compile(r"(!?)\[([^\]]*)\]\(([^)\s]+)(\s+\"[^\"]*\")?\)")
_FENCE = re.compile(r"^\s*(```|~~~)")
_HEADING = re.compile(r"^(#{1,4})(\s)")


def _is_relative(target: str) -> bool:
    return not (target.startswith(("#", "/", "mailto:", "data:")) or re.match(r"^[a-z][a-z0-9+.-]*://", target))


def _rewrite_links(line: str, folder: Path) -> str:
    def sub(m: re.Match[str]) -> str:
        bang, text, target, title = m.group(1), m.group(2), m.group(3), m.group(4) or ""
        if not _is_relative(target):
            return m.group(0)
        path = (folder / target.split("#", 1)[0]).resolve()
        if bang and path.suffix.lower() in _MIME and path.is_file():
            data = base64.b64encode(path.read_bytes()).decode("ascii")
            return f"![{text}](data:{_MIME[path.suffix.lower()]};base64,{data}{title})"
        shown = (RESULTS / target).as_posix()
        return f"{text} (`{shown}`)" if text else f"`{shown}`"

    return _LINK.sub(sub, line)


def _include(path: Path) -> str:
    out: list[str] = []
    in_fence = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if _FENCE.match(line):
            in_fence = not in_fence
            out.append(line)
            continue
        if not in_fence:
            line = _HEADING.sub(lambda m: "##" + m.group(1) + m.group(2), line)  # under "## file"
            line = _rewrite_links(line, path.parent)
        out.append(line)
    return "\n".join(out)


def results_markdown(root: Path) -> str:
    """The Markdown that replaces the marker, for a repository rooted at ``root``."""
    folder = root / RESULTS
    files = sorted(folder.glob("*.md")) if folder.is_dir() else []
    if not files:
        return ('!!! note "No benchmark results yet"\n'
                f"    No `{RESULTS.as_posix()}/*.md` files exist in this checkout; they appear "
                "here once the benchmarks have been run.\n")
    parts = []
    for f in files:
        parts.append(f"## `{f.name}`\n\n{_include(f)}\n")
    return "\n".join(parts)


def on_page_markdown(markdown: str, page, config, files) -> str:  # noqa: ARG001 - MkDocs hook API
    if page.file.src_uri != PAGE or MARKER not in markdown:
        return markdown
    root = Path(config["config_file_path"]).resolve().parent
    return markdown.replace(MARKER, results_markdown(root))
