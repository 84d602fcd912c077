"""`mtc models`: the registry as a table."""

from __future__ import annotations

import sys

import click

COLUMNS = ("name", "variant", "task", "purpose", "input", "license", "weights")


@click.command()
def models() -> None:
    """List the models mtc can compile, what each mattes, their licences and whether their weights are cached."""
    from rich.console import Console
    from rich.table import Table

    from mtc.models.registry import list_models
    from mtc.weights import is_cached

    rows = []
    for spec in list_models():
        for variant in spec.variants.values():
            size = f"{variant.weights.size / 1e6:.1f} MB" if variant.weights.size is not None else "size unknown"
            cached = "cached" if is_cached(variant.weights) else f"not cached ({size})"
            default = " (default)" if variant.name == spec.default_variant else ""
            rows.append((spec.name, variant.name + default, spec.task, spec.purpose or "-", spec.input_description,
                         spec.license, cached))
    if not sys.stdout.isatty():
        # Piped or in CI, rich squeezes the table into 80 columns and wraps every cell over
        # several lines; plain aligned columns keep one variant per line, for grep and for logs.
        # (The stream itself, not rich's is_terminal, which FORCE_COLOR turns on in CI.)
        click.echo(_plain_columns(COLUMNS, rows))
        return
    table = Table(title="mtc models")
    for column in COLUMNS:
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    Console().print(table)


def _plain_columns(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    """Left-aligned columns two spaces apart, one line per row, never wrapped."""
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows)]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip()
                     for line in (header, *rows))
