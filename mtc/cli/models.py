"""`mtc models`: the registry as a table."""

from __future__ import annotations

import click


@click.command()
def models() -> None:
    """List the models mtc can compile, their licences and whether their weights are cached."""
    from rich.console import Console
    from rich.table import Table

    from mtc.models.registry import list_models
    from mtc.weights import is_cached

    table = Table(title="mtc models")
    for column in ("name", "variant", "task", "input", "license", "weights"):
        table.add_column(column)
    for spec in list_models():
        for variant in spec.variants.values():
            size = f"{variant.weights.size / 1e6:.1f} MB" if variant.weights.size is not None else "size unknown"
            cached = "cached" if is_cached(variant.weights) else f"not cached ({size})"
            default = " (default)" if variant.name == spec.default_variant else ""
            table.add_row(spec.name, variant.name + default, spec.task, spec.input_description, spec.license, cached)
    Console().print(table)
