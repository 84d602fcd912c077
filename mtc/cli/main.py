"""The `mtc` command. Subcommands load lazily so `mtc --help` imports nothing heavy."""

from __future__ import annotations

import importlib
import logging
import sys

import click

from mtc import __version__

# command name -> "module:function"; each module only parses options and calls the library.
COMMANDS = {
    "models": "mtc.cli.models:models",
    "export": "mtc.cli.export:export",
    "quantize": "mtc.cli.quantize:quantize",
    "build": "mtc.cli.build:build",
    "backends": "mtc.cli.backends:backends",
    "bench": "mtc.cli.bench:bench",
    "inspect": "mtc.cli.inspect:inspect",
    "run": "mtc.cli.run:run",
    "cache": "mtc.cli.cache:cache",
    "package": "mtc.cli.package:package",
    "batch": "mtc.cli.batch:batch",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attr = COMMANDS[name].split(":")
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Help text is kept here so listing commands imports none of them.
        with formatter.section("Commands"):
            formatter.write_dl([(name, SUMMARIES[name]) for name in COMMANDS])


SUMMARIES = {
    "models": "List the models mtc can compile.",
    "export": "Export a model to a verified artifact folder.",
    "quantize": "INT8 or FP16 from an FP32 artifact, gated frame by frame.",
    "build": "Prepare an artifact for a backend: TensorRT plans, OpenVINO/ORT caches.",
    "backends": "Show which backends can run here, and what auto picks.",
    "bench": "Measure an artifact's speed, memory and accuracy; check CI gates.",
    "inspect": "Show an artifact's manifest, graph and cost per frame.",
    "run": "Matte an image, a folder of images, or a video.",
    "cache": "List or clear mtc's cache (engines, optimized models, downloads).",
    "package": "Add an artifact to a Triton Inference Server model repository.",
    "batch": "Matte a library of videos on a Ray cluster, one task per video.",
}


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mtc")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging and full tracebacks.")
@click.pass_context
def cli(ctx: click.Context, verbose: bool) -> None:
    """mtc compiles matting models into fast, verified deployment artifacts."""
    ctx.ensure_object(dict)
    ctx.obj["verbose"] = verbose
    _setup_logging(verbose)


def _setup_logging(verbose: bool) -> None:
    from rich.console import Console
    from rich.logging import RichHandler

    # Logs go to stderr: stdout carries results (paths, tables, JSON) that may be piped.
    handler = RichHandler(console=Console(stderr=True), show_time=False, show_path=False, rich_tracebacks=verbose)
    logger = logging.getLogger("mtc")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False


def main(argv: list[str] | None = None) -> None:
    """Console entry point: one line per user error, a traceback only with --verbose."""
    from mtc.errors import MtcError
    from mtc.fsutil import terminate_like_interrupt

    args = sys.argv[1:] if argv is None else argv
    verbose = "-v" in args or "--verbose" in args
    terminate_like_interrupt()  # SIGTERM cleans up partial outputs as Ctrl-C does
    try:
        # Without standalone mode click returns (not raises) the exit code of ctx.exit(n).
        code = cli.main(args=args, prog_name="mtc", standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except MtcError as exc:
        if verbose:
            raise
        from mtc.safe_text import printable

        # Messages quote file names and manifest values: show their control characters, never run them.
        click.secho(f"error: {printable(exc)}", fg="red", err=True)
        sys.exit(1)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
