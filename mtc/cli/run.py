"""`mtc run`: matte an image, a folder of images, a video, or the built-in clip."""

from __future__ import annotations

import collections
import contextlib
import itertools
import re
import sys
from pathlib import Path

import click

from mtc.cli.options import RATIO, THREADS, max_pixels_option

BUILTIN = "builtin"
FRAME_NAME = re.compile(r"\d{6}\.png")
# `mtc run`'s exit status when the output was written but the input video lost frames to
# damaged data: distinct from 1 (nothing usable written), so scripts can tell the two apart.
EXIT_LOST_FRAMES = 3


@click.command()
@click.argument("folder", type=click.Path(path_type=Path))
@click.argument("input", metavar="INPUT")
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="Output file (image or video) or folder: for a folder of images, or for a video's frames as "
                   "numbered PNGs (a path without an extension).")
@click.option("--what", type=click.Choice(["composite", "alpha", "foreground"]), default="composite", show_default=True,
              help="composite: over --background; alpha: the matte; foreground: RGBA (PNG, or .mov ProRes 4444 / .webm VP9).")
@click.option("--background", default="green", show_default=True,
              help="Composite background: a colour (green, #RRGGBB, R,G,B) or an image file.")
@click.option("--background-plate", "plate", type=click.Path(path_type=Path, dir_okay=False, exists=True),
              help="Picture of the scene without the subject, the size of the frames (BackgroundMattingV2).")
@click.option("--ratio", type=RATIO, help="Downsample ratio for recurrent models, in (0, 1] (default: auto, min(512/long side, 1)).")
@click.option("--backend", default="auto", show_default=True, metavar="NAME",
              help="Execution backend: auto, or one `mtc backends` lists (auto: the best that runs this artifact "
                   "faithfully here).")
@click.option("--precision", type=click.Choice(["fp32", "bf16"]), default="fp32", show_default=True,
              help="OpenVINO inference precision (bf16 only when asked).")
@click.option("--profile", "profiles", help="TensorRT profiles, e.g. hd,4k (default: one per frame size).")
@click.option("--threads", type=THREADS, help="Inference threads (default: all available cores).")
@click.option("--x264-preset", type=click.Choice(["ultrafast", "superfast", "veryfast", "faster", "fast", "medium",
                                                  "slow"]), default="veryfast", show_default=True,
              help="H.264 encoder speed: faster presets leave more CPU to matting, files get larger.")
@click.option("--encoder", type=click.Choice(["auto", "x264", "nvenc", "qsv"]), default="auto", show_default=True,
              help="H.264 encoder: auto takes NVENC or Quick Sync where one starts (encoding off the CPU), else x264.")
@click.option("--force", is_flag=True, help="Overwrite the output if it exists.")
@max_pixels_option
def run(folder: Path, input: str, output: Path, what: str, background: str, plate: Path | None, ratio: float | None,
        backend: str,
        precision: str, profiles: str | None, threads: int | None, x264_preset: str, encoder: str,
        force: bool) -> None:
    """Matte INPUT with the artifact in FOLDER and write OUTPUT.

    INPUT is an image, a folder of images, a video, or `builtin` for the built-in demo clip.
    A video's audio is carried over to the output. A video whose damaged data cost frames is
    still written, from the frames that decode, and the command exits with status 3.
    """
    from mtc.errors import MtcError
    from mtc.runtime import load
    from mtc.runtime.apply import make_renderer
    from mtc.runtime.media import is_video

    if output.exists() and Path(input).exists() and output.samefile(input):
        raise MtcError(f"output {output} is the input", hint="write to another path: --force never overwrites the input")
    if output.exists() and not force and not (output.is_dir() and Path(input).is_dir()):
        raise MtcError(f"{output} already exists", hint="pass --force to overwrite it")
    renderer = make_renderer(what, background)
    source = Path(input)
    video = input == BUILTIN or is_video(source)
    if video and encoder not in ("auto", "x264"):
        from mtc.runtime.media import require_hardware_encoder

        require_hardware_encoder(encoder)  # before the model loads, not after
    # Beside the codec threads, idle ONNX Runtime workers must sleep, not spin: spinning took
    # the HD pipeline from 7.4 to 6.6 FPS (FP32 RVM, 2 cores).
    session = load(folder, backend=backend, downsample_ratio=ratio, threads=threads, precision=precision,
                   profiles=profiles, allow_spinning=not video)
    if plate is not None:
        from mtc.runtime.media import read_image

        session.set_background(read_image(plate))
    if video:
        stats, lost = _run_video(session, input, output, renderer, x264_preset, encoder, force)
        click.echo(f"{stats.frames} frames -> {output}: {stats.fps:.1f} FPS end to end, "
                   f"{stats.model_fps:.1f} FPS model ({session.backend.name})")
        if lost:
            from mtc.runtime.media import describe_frames

            click.echo(f"warning: {input} lost {len(lost)} frame(s) to damaged data ({describe_frames(lost)}); "
                       f"{output} holds the {stats.frames} that decode", err=True)
            sys.exit(EXIT_LOST_FRAMES)  # SystemExit: click's Exit would end `mtc` with 0 (see mtc bench)
    elif source.is_dir():
        count = _run_images(session, source, output, renderer, force)
        click.echo(f"{count} images -> {output}")
    elif source.is_file():
        _write_image(session, source, output, renderer, replace=force)
        click.echo(f"wrote {output}")
    else:
        raise MtcError(f"input not found: {input}", hint=f"pass an image, a folder, a video, or `{BUILTIN}`")


def _image_path_for(output: Path, renderer) -> Path:
    if renderer.has_alpha and output.suffix.lower() not in (".png", ".webp", ".tif", ".tiff"):
        from mtc.errors import MtcError

        raise MtcError(f"{output.name}: RGBA output needs a format with alpha", hint="use a .png output")
    return output


def _write_image(session, source: Path, output: Path, renderer, *, replace: bool) -> None:
    from mtc.runtime.media import read_image, write_image

    session.reset()  # images are independent: no state carried from the previous one
    write_image(_image_path_for(output, renderer), renderer.render(session.process(read_image(source))),
                replace=replace)


def _run_images(session, source: Path, output: Path, renderer, force: bool) -> int:
    from mtc.errors import MtcError
    from mtc.runtime.media import list_images
    from mtc.runtime.progress import frame_progress

    images = list_images(source)
    output.mkdir(parents=True, exist_ok=True)
    suffix = ".png" if renderer.has_alpha or renderer.kind == "alpha" else None
    with frame_progress("matting images", total=len(images)) as advance:
        for path in images:
            target = output / (path.stem + (suffix or path.suffix))
            if target.exists() and not force:
                raise MtcError(f"{target} already exists", hint="pass --force to overwrite")
            _write_image(session, path, target, renderer, replace=force)
            advance()
    return len(images)


def _run_video(session, input: str, output: Path, renderer, x264_preset: str, encoder: str, force: bool):
    from mtc.runtime.apply import matte_stream
    from mtc.runtime.media import VideoReader
    from mtc.runtime.progress import frame_progress

    # Frame times travel beside the pipeline, in order: the decode thread appends a frame's time
    # before the frame enters the pipeline, the writer takes it when the frame comes out.
    times: collections.deque = collections.deque()
    if input == BUILTIN:
        from calib_data.builtin_clip import ClipSpec, builtin_frames

        spec = ClipSpec()
        frames, fps, size, total, audio = builtin_frames(spec), spec.fps, (spec.width, spec.height), spec.frames, None
        reader = None
    else:
        reader = VideoReader(Path(input))
        frames = _noting_times(reader.timed_frames(), times)
        fps, size, total = reader.fps, (reader.width, reader.height), reader.frame_count
        audio = Path(input) if reader.has_audio else None
    if output.suffix == "" or output.is_dir():
        sink = _frame_folder(output, force)
    else:
        sink = _video_file(output, size, fps, renderer, audio, x264_preset, encoder, timed=reader is not None,
                           replace=force)
    try:
        with sink as write_picture, frame_progress("matting video", total=total) as advance:
            def write(picture):
                write_picture(picture, times.popleft() if times else None)

            stats = matte_stream(session, frames, write, renderer, on_frame=lambda s: advance(fps=s.fps))
    finally:
        if reader is not None:
            reader.close()
    return stats, (reader.lost_frames if reader is not None else [])


@contextlib.contextmanager
def _video_file(output: Path, size, fps, renderer, audio, x264_preset: str, encoder: str, timed: bool,
                replace: bool):
    from mtc.runtime.media import VideoWriter

    gray = renderer.kind == "alpha"
    with VideoWriter(output, width=size[0], height=size[1], fps=fps, kind="rgba" if renderer.has_alpha else "rgb",
                     audio_from=audio, x264_preset=x264_preset, timed=timed, encoder=encoder,
                     replace=replace) as writer:
        yield lambda picture, time: writer.write(_gray_to_rgb(picture) if gray else picture, time=time)


@contextlib.contextmanager
def _frame_folder(output: Path, force: bool):
    """Numbered PNGs (000001.png, ...) in a folder that appears only when the video is done.
    --force replaces only a folder of such frames, never one holding anything else."""
    from mtc.errors import MtcError
    from mtc.fsutil import atomic_dir
    from mtc.runtime.media import write_image

    if output.is_dir() and any(not FRAME_NAME.fullmatch(p.name) for p in output.iterdir()):
        raise MtcError(f"{output} holds files other than numbered frames",
                       hint="write the frames to a new folder: --force replaces only a folder of frames")
    with atomic_dir(output, overwrite=force) as folder:
        numbers = itertools.count(1)
        yield lambda picture, time: write_image(folder / f"{next(numbers):06d}.png", picture, png_compression=1)


def _noting_times(timed_frames, times: collections.deque):
    for time, frame in timed_frames:
        times.append(time)
        yield frame


def _gray_to_rgb(alpha):
    import numpy as np

    return np.repeat(alpha[..., None], 3, axis=2)
