"""Progress bars for long loops (rich), silent when output is not a terminal."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def frame_progress(description: str, total: int | None) -> Iterator[Callable[..., None]]:
    """Yield `advance(fps=None)`; shows a bar with count, FPS and ETA on a terminal."""
    if not sys.stderr.isatty():
        yield lambda **_: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[fps]}"), TimeRemainingColumn(), console=Console(stderr=True)) as bar:
        task = bar.add_task(description, total=total, fps="")

        def advance(fps: float | None = None) -> None:
            bar.update(task, advance=1, fps=f"{fps:.1f} FPS" if fps else "")

        yield advance
