"""The ``bayesinv`` command line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    name="bayesinv",
    help="Bayesian inverse problems with normalizing-flow priors: reconstructions with honest "
    "uncertainty maps.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        from . import __version__

        typer.echo(f"bayesinv {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[bool | None, typer.Option("--version", callback=_version, is_eager=True,
                                                    help="Print the version and exit.")] = None,
) -> None:
    """bayesinv: run `bayesinv demo` for the embedded end-to-end example."""


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Output folder for figures, posterior and report.")] = Path("demo_out"),
    seed: Annotated[int, typer.Option(help="Random seed (phantom, noise, sampler).")] = 0,
    device: Annotated[str, typer.Option(help="'cpu', 'cuda' or 'auto'.")] = "auto",
    size: Annotated[int, typer.Option(help="Image size in pixels (square).")] = 64,
) -> None:
    """Simulate a sparse-view CT scan of an embedded phantom and reconstruct it with uncertainty."""
    from .demo import run_demo

    try:
        result = run_demo(out=out, seed=seed, device=device, size=size)
    except (ValueError, TypeError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(code=2) from None
    for line in result["summary"]:
        typer.echo(line)


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="Run file (.toml or .json): data, operator, prior, noise, method.")],
    out: Annotated[Path | None, typer.Option(help="Output folder (default: the file's `out`).")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed (default: the file's `seed`).")] = None,
    device: Annotated[str | None, typer.Option(help="'cpu', 'cuda' or 'auto'.")] = None,
) -> None:
    """Simulate a problem from a run file, run its method (map/mcmc/vi/exact), write posterior and report."""
    from .config import read_config, run_config

    try:
        result = run_config(read_config(config), device=device, out=out, seed=seed)
    except (ValueError, TypeError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(code=2) from None
    typer.echo(f"method {result['method']}: PSNR {result['psnr']:.2f} dB")
    for f in result["files"]:
        typer.echo(f"wrote {f}")


@app.command()
def report(
    posterior: Annotated[Path, typer.Argument(help="A posterior saved as netCDF (Posterior.save).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="HTML file to write.")] = Path("report.html"),
    title: Annotated[str, typer.Option(help="Report title.")] = "bayesinv uncertainty report",
) -> None:
    """Write a self-contained HTML uncertainty report for a saved posterior."""
    from .diagnostics.report import uq_report
    from .infer.posterior import Posterior

    try:
        post = Posterior.load(posterior)
        uq_report(post, output, title=title)
    except (ValueError, TypeError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(code=2) from None
    typer.echo(f"wrote {output}")


if __name__ == "__main__":  # pragma: no cover
    app()
