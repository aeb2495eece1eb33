"""Run the benchmarks: ``python -m benchmarks.run [--quick] [--check-floors] [--only quality]``.

* the quality harness (:mod:`benchmarks.quality`): writes ``results/quality.{json,md}``
  (full mode) or ``results/quality_quick.{json,md}`` (``--quick``); ``--check-floors`` exits with status 1 if a PSNR/SSIM is below its
  floor in ``benchmarks/floors.json``; ``--write-floors`` regenerates the floors of the mode
  that was run (measured − 0.5 dB PSNR, − 0.02 SSIM);
* every other ``benchmarks/bench_*.py`` that defines ``main(quick: bool) -> dict`` (others are
  skipped with a note); a bench that raises makes the exit status 1.

Everything is combined in ``results/summary.md`` (and ``results/summary.json``); ``--quick``
writes ``summary.quick.{md,json}`` and every bench writes its ``*.quick.*`` files, so a quick run
never replaces a full measurement.
``--only`` takes a comma-separated list of ``quality`` and bench names (``bench_flows`` or
``flows``).
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent


def discover_benches(directory: Path | str = HERE, only: set[str] | None = None) -> dict[str, object]:
    """``{name: main}`` for each ``bench_*.py`` in ``directory`` whose ``main`` has a parameter
    named ``quick`` (it is called as ``main(quick=...)``); other modules map to a string saying
    why they are skipped. With ``only``, modules not selected are not even imported."""
    found: dict[str, object] = {}
    for path in sorted(Path(directory).glob("bench_*.py")):
        name = path.stem
        if not _selected(name, only):
            continue
        try:
            spec = importlib.util.spec_from_file_location(f"benchmarks.{name}", path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module
            spec.loader.exec_module(module)  # type: ignore[union-attr]
        except Exception as exc:  # noqa: BLE001 - report, do not crash the whole run
            found[name] = f"skipped: import failed ({type(exc).__name__}: {exc})"
            continue
        main = getattr(module, "main", None)
        if not callable(main):
            found[name] = "skipped: no main(quick) function"
            continue
        try:
            params = inspect.signature(main).parameters
        except (TypeError, ValueError):
            params = {}
        if "quick" not in params:
            found[name] = "skipped: main() has no `quick` parameter"
            continue
        found[name] = main
    return found


def _selected(name: str, only: set[str] | None) -> bool:
    return only is None or name in only or name.removeprefix("bench_") in only


def _format_value(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (dict, list)):
        return "`" + json.dumps(v, default=str)[:200] + "`"
    return str(v)


def summary_markdown(quality_md: str | None, benches: dict[str, object], mode: str) -> str:
    """Combine the quality table and every bench's result dict into one Markdown page."""
    lines = [f"# Benchmark summary ({mode} mode)", ""]
    if quality_md:
        lines += [quality_md.replace("# Reconstruction quality", "## Reconstruction quality"), ""]
    for name, result in benches.items():
        lines += [f"## {name}", ""]
        if isinstance(result, dict):
            lines += ["| key | value |", "|---|---|"]
            lines += [f"| {k} | {_format_value(v)} |" for k, v in result.items()]
        else:
            lines.append(str(result))
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    from benchmarks import quality

    ap = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small images, few iterations")
    ap.add_argument("--check-floors", action="store_true",
                    help="exit 1 if a quality number is below its floor")
    ap.add_argument("--write-floors", action="store_true",
                    help="regenerate the floors of this mode from this run")
    ap.add_argument("--only", default=None, help="comma-separated: quality, bench names")
    ap.add_argument("--tasks", default=None, help="comma-separated quality tasks (default all)")
    ap.add_argument("--methods", default=None, help="comma-separated methods (default all)")
    ap.add_argument("--n-images", type=int, default=None, help="test images per task")
    ap.add_argument("--size", type=int, default=None, help="image side (default 32 quick, 64 full)")
    ap.add_argument("--out", default=str(quality.RESULTS_DIR), help="results folder")
    ap.add_argument("--floors", default=str(quality.FLOORS_PATH), help="floors JSON file")
    ap.add_argument("--bench-dir", default=str(HERE), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    only = None if args.only is None else {s.strip() for s in args.only.split(",") if s.strip()}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    mode = "quick" if args.quick else "full"
    status = 0
    quality_md = None
    if _selected("quality", only):
        def split(s: str | None) -> list[str] | None:
            return None if s is None else [v.strip() for v in s.split(",") if v.strip()]

        t0 = time.perf_counter()
        records = quality.run(split(args.tasks), split(args.methods), args.n_images,
                              quick=args.quick, size=args.size, out_dir=out)
        table = out / ("quality_quick.md" if args.quick else "quality.md")
        print(f"quality: {len(records)} records in {time.perf_counter() - t0:.1f} s -> {table}")
        quality_md = table.read_text()
        floors_path = Path(args.floors)
        if args.write_floors:
            floors = quality.make_floors(records, existing=quality.load_floors(floors_path))
            floors_path.write_text(json.dumps(floors, indent=1, sort_keys=True) + "\n")
            print(f"floors written for mode {mode!r} -> {floors_path}")
        if args.check_floors:
            floors = quality.load_floors(floors_path)
            if mode not in floors:
                print(f"check-floors: no floors recorded for mode {mode!r} in {floors_path}")
            failures = quality.check_floors(records, floors)
            for f in failures:
                print("FLOOR FAILED:", f)
            if failures:
                status = 1
            else:
                print(f"check-floors: all numbers at or above their floors ({mode})")
    benches: dict[str, object] = {}
    for name, main_fn in discover_benches(args.bench_dir, only).items():
        if not callable(main_fn):
            benches[name] = main_fn
            print(f"{name}: {main_fn}")
            continue
        t0 = time.perf_counter()
        try:
            result = main_fn(quick=args.quick)
            benches[name] = result if isinstance(result, dict) else {"result": result}
            print(f"{name}: done in {time.perf_counter() - t0:.1f} s")
        except Exception as exc:  # noqa: BLE001 - one failing bench must not hide the others
            benches[name] = f"FAILED: {type(exc).__name__}: {exc}"
            traceback.print_exc()
            status = 1
    stem = "summary.quick" if args.quick else "summary"  # a quick run keeps the full summary
    (out / f"{stem}.md").write_text(summary_markdown(quality_md, benches, mode))
    (out / f"{stem}.json").write_text(json.dumps(
        {"mode": mode, "benches": benches, "status": status}, indent=1, default=str))
    print(f"summary -> {out / f'{stem}.md'}")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
