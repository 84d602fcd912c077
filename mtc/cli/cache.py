"""`mtc cache ls|clear`: what mtc keeps on disk, and a way to drop it."""

from __future__ import annotations

from datetime import datetime

import click

from mtc.safe_text import printable


@click.group()
def cache() -> None:
    """List or clear mtc's cache: compiled engines and optimized models (rebuilt when needed,
    bounded by MTC_CACHE_MAX_BYTES, least recently used evicted first) and downloaded weights."""


@cache.command("ls")
@click.option("--entries", "-l", "show_entries", is_flag=True, help="List every entry, least recently used first.")
def ls(show_entries: bool) -> None:
    """Show each cache area's size and entry count."""
    from mtc.artifact.cache import ENGINE_AREAS, cache_dir, cache_entries, cache_max_bytes, format_bytes

    root = cache_dir()
    entries = cache_entries(root)
    engine_bytes = sum(e.size for e in entries if e.area in ENGINE_AREAS)
    click.echo(f"{printable(root)}: engine caches {format_bytes(engine_bytes)} of {format_bytes(cache_max_bytes())} "
               "(MTC_CACHE_MAX_BYTES)")
    for area in sorted({e.area for e in entries}):
        group = [e for e in entries if e.area == area]
        kind = "rebuilt when needed" if area in ENGINE_AREAS else "kept (mtc cache clear --all removes it)"
        click.echo(f"  {printable(area):<22} {format_bytes(sum(e.size for e in group)):>10}  "
                   f"{len(group):>4} entr{'y' if len(group) == 1 else 'ies'}  {kind}")
    if show_entries:
        for entry in sorted(entries, key=lambda e: e.last_used):
            head = entry.seal or entry.files[0]
            used = datetime.fromtimestamp(entry.last_used).isoformat(sep=" ", timespec="seconds")
            state = "sealed" if entry.seal is not None else "unsealed"
            click.echo(f"{used}  {format_bytes(entry.size):>10}  {state:<8}  {printable(head.relative_to(root))}")


@cache.command("clear")
@click.option("--all", "everything", is_flag=True,
              help="Also delete downloaded weights and other kept files (fetched again when needed).")
def clear(everything: bool) -> None:
    """Delete the compiled engines and optimized models (and, with --all, everything else)."""
    from mtc.artifact.cache import ENGINE_AREAS, cache_dir, clear_cache, format_bytes

    root = cache_dir()
    areas = sorted(p.name for p in root.iterdir() if p.is_dir()) if everything else ENGINE_AREAS
    freed = clear_cache(areas=areas, root=root)
    click.echo(f"freed {format_bytes(freed)} in {printable(root)}")
