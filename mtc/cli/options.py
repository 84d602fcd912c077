"""Option parsing shared by several commands."""

from __future__ import annotations

import re

import click


def parse_resolution(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, int] | None:
    """'1920x1080' -> (1920, 1080)."""
    if value is None:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", value)
    if not match or min(int(match[1]), int(match[2])) < 16:
        raise click.BadParameter(f"{value!r} is not WIDTHxHEIGHT with both sides >= 16, e.g. 1920x1080")
    return int(match[1]), int(match[2])
