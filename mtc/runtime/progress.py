"""Progress on stderr (rich): bars for long loops, and the stages of long commands.

Everything here writes to stderr, never stdout, where commands print results (and JSON). Off a
terminal (CI logs, redirected stderr) bars are not drawn at all.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from rich.console import Console

T = TypeVar("T")


def _stderr_console() -> Console:
    from rich.console import Console

    return Console(stderr=True)


@contextlib.contextmanager
def frame_progress(description: str, total: int | None, *, console: Console | None = None,
                   transient: bool = False) -> Iterator[Callable[..., None]]:
    """Yield `advance(fps=None, steps=1)`; shows a bar with count, FPS and ETA on a terminal.

    Args:
        description: what the loop does, shown left of the bar.
        total: steps expected; None when unknown (the bar then pulses and counts).
        console: where to draw (default: a console on stderr); nothing is drawn unless it is a
            terminal.
        transient: remove the bar when the loop ends.
    """
    if console is None:
        if not sys.stderr.isatty():
            yield lambda **_: None
            return
        console = _stderr_console()
    if not console.is_terminal:
        yield lambda **_: None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    # stdout goes around the bar only when it is this terminal too: a piped stdout (results,
    # JSON) must not be diverted to stderr while a bar is up.
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[fps]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                  console=console, transient=transient, redirect_stdout=sys.stdout.isatty()) as bar:
        task = bar.add_task(description, total=total, fps="")

        def advance(fps: float | None = None, steps: float = 1) -> None:
            bar.update(task, advance=steps, fps=f"{fps:.1f} FPS" if fps else "")

        yield advance


def counted(items: Iterable[T], advance: Callable[[], None]) -> Iterator[T]:
    """`items`, calling `advance()` each time the consumer is done with one (when it asks for
    the next, or stops): a step counter for loops inside code that takes no progress callback."""
    started = False
    for item in items:
        if started:
            advance()
        started = True
        yield item
    if started:
        advance()


def format_duration(seconds: float) -> str:
    """12.3 s, 4 min 05 s, 1 h 02 min."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    return f"{minutes // 60} h {minutes % 60:02d} min"


class Stages:
    """Announces the stages of a long command on stderr, with how long each took.

    On a terminal each stage shows its name as it starts, with a progress bar (count, elapsed,
    ETA) where it steps through frames, layers or candidates, then leaves one line with its
    duration. Off a terminal only that last line is written: one line per stage keeps CI logs
    short and still says where the time went.

    Example:
        stages = Stages()
        with stages.stage("calibrating ranges", total=len(feeds)) as advance:
            for feed in feeds:
                ...
                advance()
    """

    def __init__(self, console: Console | None = None):
        """Report on `console`, by default on stderr.

        Args:
            console: where to write (default: a rich console on stderr); tests pass one on a
                StringIO, with `force_terminal` to see what a terminal shows.
        """
        self.console = console if console is not None else _stderr_console()
        # By default stderr itself decides, not rich's is_terminal: FORCE_COLOR, often set in
        # CI, turns that on and would fill logs with redrawn bars.
        self.live = self.console.is_terminal if console is not None else sys.stderr.isatty()

    @contextlib.contextmanager
    def stage(self, name: str, total: int | None = None, *, counts: bool = True) -> Iterator[Callable[..., None]]:
        """Run one stage: yields `advance()`, which steps its bar.

        Args:
            name: the stage, as users read it ("calibrating ranges").
            total: steps expected; None when unknown (the bar counts without an ETA).
            counts: False for a stage with no steps to count: a terminal shows its name and
                the time elapsed, without a bar.
        """
        started = time.perf_counter()
        if not self.live:
            display = contextlib.nullcontext(lambda **_: None)
        elif counts:
            display = frame_progress(name, total, console=self.console, transient=True)
        else:
            display = self._spinner(name)
        with display as advance:
            yield advance
        elapsed = time.perf_counter() - started
        if self.live:
            from rich.markup import escape

            self.console.print(f"[green]✓[/] {escape(name)} [dim]{format_duration(elapsed)}[/]", highlight=False)
        else:
            # soft_wrap: one line however long, where rich would wrap at its 80-column default
            self.console.print(f"{name}: {format_duration(elapsed)}", highlight=False, markup=False, soft_wrap=True)

    @contextlib.contextmanager
    def _spinner(self, name: str) -> Iterator[Callable[..., None]]:
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=self.console,
                      transient=True, redirect_stdout=sys.stdout.isatty()) as bar:
            bar.add_task(name, total=None)
            yield lambda **_: None

