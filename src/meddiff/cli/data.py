"""``meddiff data``: read and check datasets."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(no_args_is_help=True, help="Read and check datasets.")


@app.command("inspect")
def data_inspect(
    path: Path = typer.Argument(..., help="A dataset folder, NIfTI file or DICOM series folder."),
    class_map: Path | None = typer.Option(None, "--class-map", help="Class-map YAML for RGB masks."),
) -> None:
    """Print counts, sizes, modes, class histogram, every problem found and privacy warnings.

    Example: `meddiff data inspect ../shared/data/acdc`
    """
    from meddiff.data.inspect import format_report, inspect_path

    result = inspect_path(path, class_map=class_map)
    typer.echo(format_report(result))
    if result.problems:
        raise typer.Exit(code=2)
