"""The documentation builds with ``mkdocs build --strict`` (slow: renders the API reference)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _mkdocs() -> str | None:
    """The mkdocs of this environment (beside this Python), else one on PATH."""
    here = Path(sys.executable).parent / "mkdocs"
    return str(here) if here.exists() else shutil.which("mkdocs")


@pytest.mark.slow
def test_mkdocs_build_strict(tmp_path: Path):
    pytest.importorskip("mkdocs", reason="mkdocs is not installed (pip install -e '.[docs]')")
    pytest.importorskip("material", reason="mkdocs-material is not installed (pip install -e '.[docs]')")
    pytest.importorskip("mkdocstrings_handlers.python",
                        reason="mkdocstrings[python] is not installed (pip install -e '.[docs]')")
    exe = _mkdocs()
    if exe is None:
        pytest.skip("the mkdocs command is not installed (pip install -e '.[docs]')")
    site = tmp_path / "site"
    proc = subprocess.run([exe, "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"),
                           "--site-dir", str(site)], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    for page in ("index.html", "concepts/index.html", "reference/operators/index.html",
                 "benchmarks/index.html"):
        assert (site / page).is_file(), page
    # the API reference was rendered from the docstrings, not left as a ::: directive
    operators = (site / "reference/operators/index.html").read_text(encoding="utf-8")
    assert "adjointness_error" in operators and ":::" not in operators
    # offline: no web fonts or CDN scripts in the pages
    index = (site / "index.html").read_text(encoding="utf-8")
    assert "fonts.googleapis.com" not in index and "cdn.jsdelivr" not in index


def test_benchmarks_hook_without_and_with_results(tmp_path: Path):
    """The benchmarks page shows a note without results and inlines results/*.md when present."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_docs_hook_benchmark_results",
                                                  ROOT / "docs" / "hooks" / "benchmark_results.py")
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    assert "No benchmark results yet" in hook.results_markdown(tmp_path)
    res = tmp_path / "benchmarks" / "results"
    res.mkdir(parents=True)
    (res / "b.md").write_text("# Speed\n\nsee [log](run.log) and ![plot](p.png)\n\n```\n# not a heading\n```\n")
    (res / "a.md").write_text("# Quality\n\n| x | y |\n|---|---|\n| 1 | 2 |\n")
    (res / "p.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    out = hook.results_markdown(tmp_path)
    assert out.index("`a.md`") < out.index("`b.md`")           # sorted by name
    assert "### Quality" in out and "### Speed" in out          # headings under the file heading
    assert "# not a heading" in out and "### not a heading" not in out  # code untouched
    assert "data:image/png;base64," in out                      # image embedded
    assert "log (`benchmarks/results/run.log`)" in out          # other links become paths
