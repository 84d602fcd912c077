"""`mtc run`: matte an image, a folder of images (once or watched), a video, raw frames on
standard input, or the built-in clip."""

from __future__ import annotations

import collections
import contextlib
import itertools
import os
import re
import sys
from pathlib import Path

import click

from mtc.cli.options import RATIO, THREADS, max_pixels_option

BUILTIN = "builtin"
STDIO = "-"
FRAME_NAME = re.compile(r"\d{6}\.png")
# A printf-style frame number in an output path: out/%06d.png (as ffmpeg's image2 muxer takes it).
FRAME_PATTERN = re.compile(r"%0?\d*d")
# `mtc run`'s exit status when the output was written but the input video lost frames to
# damaged data: distinct from 1 (nothing usable written), so scripts can tell the two apart.
EXIT_LOST_FRAMES = 3
LOCAL_RAY = "local"  # `--ray` without an address: start a cluster on this machine
# zlib level of the PNGs written for images: 1 encodes a full-size RGBA cut-out about 4x faster
# than Pillow's default 6 for files about 14% larger (evalset photos, 2 cores); the same level
# numbered video frames use.
DEFAULT_PNG_COMPRESSION = 1


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
@click.option("--png-compression", type=click.IntRange(0, 9), default=DEFAULT_PNG_COMPRESSION, show_default=True,
              help="zlib level (0-9) of PNG images written for image inputs: higher is smaller and slower "
                   "(6 is Pillow's default).")
@click.option("--watch", is_flag=True,
              help="INPUT is a folder: matte its images, then each new one as it arrives, until Ctrl-C.")
@click.option("--raw", "raw_size", metavar="WxH",
              help="INPUT `-`: packed RGB frames (rgb24) of this size on standard input, e.g. from `ffmpeg -f rawvideo "
                   "-pix_fmt rgb24 -`; OUTPUT `-` (raw rgb24, gray alpha or rgba bytes per frame) or a pattern such as "
                   "out/%06d.png.")
@click.option("--alpha-matting", is_flag=True,
              help="Refine edges: closed-form or KNN matting in a trimap made from the matte (needs mtc[refine]).")
@click.option("--alpha-matting-foreground", "am_foreground", type=click.IntRange(0, 255), default=240,
              show_default=True, help="Alpha (0-255) above which a pixel is sure foreground.")
@click.option("--alpha-matting-background", "am_background", type=click.IntRange(0, 255), default=10,
              show_default=True, help="Alpha (0-255) below which a pixel is sure background.")
@click.option("--alpha-matting-erode", "am_erode", type=click.IntRange(min=0), default=10, show_default=True,
              help="Erode the sure regions by this many pixels: the unknown band around the edge.")
@click.option("--alpha-matting-method", "am_method", type=click.Choice(["cf", "knn"]), default="cf",
              show_default=True, help="cf: closed-form matting; knn: KNN matting.")
@click.option("--post-process-mask", is_flag=True,
              help="Clean the matte into a binary mask: opening, Gaussian blur, threshold (before --alpha-matting).")
@click.option("--mask", "mask_path", type=click.Path(path_type=Path, dir_okay=False),
              help="Models that follow an object (matanyone): the first frame's mask, white on black (or a cut-out), "
                   "the size of the video.")
@click.option("--mask-from", "mask_from", type=click.Path(path_type=Path, file_okay=False),
              help="Models that follow an object: make the first frame's mask with this image-matting artifact "
                   "(e.g. artifacts/birefnet-general-fp32), so one command mattes any object.")
@click.option("--ray", "ray_address", is_flag=False, flag_value=LOCAL_RAY, metavar="[ADDRESS]",
              help="INPUT is a video or a folder of videos and OUTPUT a folder: matte them on Ray, one task per video, "
                   "on a local cluster or the one at ADDRESS (auto, ray://HOST:10001); `mtc batch` has more options.")
@max_pixels_option
def run(folder: Path, input: str, output: Path, what: str, background: str, plate: Path | None, ratio: float | None,
        backend: str,
        precision: str, profiles: str | None, threads: int | None, x264_preset: str, encoder: str,
        force: bool, png_compression: int, watch: bool, raw_size: str | None, alpha_matting: bool, am_foreground: int, am_background: int,
        am_erode: int, am_method: str, post_process_mask: bool, mask_path: Path | None, mask_from: Path | None,
        ray_address: str | None) -> None:
    """Matte INPUT with the artifact in FOLDER and write OUTPUT.

    INPUT is an image, a folder of images, a video, `builtin` for the built-in demo clip, or
    `-` for raw frames on standard input (--raw). A video's audio is carried over to the output.
    A video whose damaged data cost frames is still written, from the frames that decode, and
    the command exits with status 3.
    """
    from mtc.errors import MtcError
    from mtc.runtime import load
    from mtc.runtime.apply import CoverageTally, FinishedSession, make_renderer
    from mtc.runtime.video_reader import is_video

    if ray_address is not None:
        from mtc.cli.batch import run_library

        single_process = {"--watch": watch, "--raw": raw_size, "--alpha-matting": alpha_matting,
                          "--mask": mask_path, "--mask-from": mask_from,
                          "--post-process-mask": post_process_mask, "--background-plate": plate, "--ratio": ratio,
                          "--profile": profiles, "--precision": precision != "fp32"}
        if any(single_process.values()):
            used = ", ".join(name for name, value in single_process.items() if value)
            raise click.UsageError(f"--ray does not take {used}: it runs the artifact's defaults on each worker")
        run_library(folder, [input], output, address=None if ray_address == LOCAL_RAY else ray_address,
                    threads_per_video=threads or 1, what=what, background=background, backend=backend, force=force,
                    x264_preset=x264_preset, encoder=encoder)
        return
    raw = _raw_size(input, output, raw_size)
    if watch and not Path(input).is_dir():
        raise click.UsageError(f"--watch needs a folder to watch; {input!r} is not one")
    if raw is None and output.exists() and Path(input).exists() and output.samefile(input):
        raise MtcError(f"output {output} is the input", hint="write to another path: --force never overwrites the input")
    if raw is None and output.exists() and not force and not (output.is_dir() and Path(input).is_dir()):
        raise MtcError(f"{output} already exists", hint="pass --force to overwrite it")
    steps = _finishing_steps(post_process_mask, alpha_matting, am_foreground, am_background, am_erode, am_method)
    renderer = make_renderer(what, background)
    source = Path(input)
    video = raw is not None or input == BUILTIN or is_video(source)
    if video and encoder not in ("auto", "x264"):
        from mtc.runtime.video_writer import require_hardware_encoder

        require_hardware_encoder(encoder)  # before the model loads, not after
    # Beside the codec threads (videos and image folders alike), idle ONNX Runtime workers must
    # sleep, not spin: spinning took the HD pipeline from 7.4 to 6.6 FPS (FP32 RVM, 2 cores).
    tally = CoverageTally()
    session = FinishedSession(load(folder, backend=backend, downsample_ratio=ratio, threads=threads,
                                   precision=precision, profiles=profiles, allow_spinning=False), steps, tally)
    if plate is not None:
        from mtc.runtime.images import read_image

        session.set_background(read_image(plate))
    _give_prompt(session, mask_path, mask_from, backend=backend, threads=threads)
    if raw is not None:
        stats = _run_raw(session, raw, output, renderer, force)
        click.echo(f"{stats.frames} frames -> {output}: {stats.fps:.1f} FPS end to end, "
                   f"{stats.model_fps:.1f} FPS model ({session.backend.name})", err=True)
        _warn_about_coverage(session.manifest, tally, every_frame=True)
    elif video:
        stats, lost = _run_video(session, input, output, renderer, x264_preset, encoder, force)
        click.echo(f"{stats.frames} frames -> {output}: {stats.fps:.1f} FPS end to end, "
                   f"{stats.model_fps:.1f} FPS model ({session.backend.name})")
        _warn_about_coverage(session.manifest, tally, every_frame=True)
        if lost:
            from mtc.runtime.video_reader import describe_frames

            click.echo(f"warning: {input} lost {len(lost)} frame(s) to damaged data ({describe_frames(lost)}); "
                       f"{output} holds the {stats.frames} that decode", err=True)
            sys.exit(EXIT_LOST_FRAMES)  # SystemExit: click's Exit would end `mtc` with 0 (see mtc bench)
    elif watch:
        count = _watch_images(session, source, output, renderer, force, png_compression)
        click.echo(f"{count} images -> {output}")
    elif source.is_dir():
        count = _run_images(session, source, output, renderer, force, png_compression)
        click.echo(f"{count} images -> {output}")
        _warn_about_coverage(session.manifest, tally, every_frame=False)
    elif source.is_file():
        _write_image(session, source, output, renderer, replace=force, png_compression=png_compression)
        click.echo(f"wrote {output}")
        _warn_about_coverage(session.manifest, tally, every_frame=False)
    else:
        raise MtcError(f"input not found: {input}", hint=f"pass an image, a folder, a video, or `{BUILTIN}`")


def _give_prompt(session, mask_path: Path | None, mask_from: Path | None, *, backend: str, threads: int | None) -> None:
    """Hand the first-frame mask to a model that follows an object; refuse a mask elsewhere, and
    a missing one before any frame is decoded."""
    from mtc.errors import MtcError

    if mask_path is not None and mask_from is not None:
        raise click.UsageError("pass --mask or --mask-from, not both")
    takes = session.prompt_input is not None
    given = mask_path or mask_from
    if given is not None and not takes:
        flag = "--mask" if mask_path else "--mask-from"
        raise MtcError(f"{flag}: this model takes no first-frame mask", hint=f"drop {flag}: {_purpose_hint(session.manifest)}")
    if takes and given is None:
        raise MtcError("this model mattes the object marked on the first frame, and no mask was given",
                       hint="pass --mask FIRST_FRAME_MASK.png, or --mask-from an image-matting artifact "
                            "(e.g. artifacts/birefnet-general-fp32)")
    if mask_path is not None:
        from mtc.runtime.images import read_mask

        session.set_prompt(read_mask(mask_path))
    elif mask_from is not None:
        from mtc.runtime import load

        finder = load(mask_from, backend=backend, threads=threads)
        if finder.prompt_input is not None:
            raise MtcError(f"--mask-from {mask_from}: that model needs a mask itself",
                           hint="use an image-matting artifact (birefnet, u2net, inspyrenet)")
        session.set_prompt(lambda frame: finder.process(frame).alpha)


def _raw_size(input: str, output: Path, raw_size: str | None) -> tuple[int, int] | None:
    """(width, height) of raw stdin frames, or None; a wrong combination is a usage error (exit 2)."""
    from mtc.bench.data import parse_resolution
    from mtc.errors import MtcError

    if (input == STDIO) != (raw_size is not None):
        raise click.UsageError("raw frames come on standard input: pass INPUT `-` together with --raw WxH")
    if raw_size is None:
        if str(output) == STDIO:
            raise click.UsageError("-o - (raw frames on standard output) needs raw input: INPUT `-` with --raw WxH")
        return None
    if str(output) != STDIO and not FRAME_PATTERN.search(output.name):
        raise click.UsageError(f"raw frames go to -o - or to a numbered pattern such as out/%06d.png, not {output}")
    try:
        return parse_resolution(raw_size)
    except MtcError as exc:
        raise click.BadParameter(str(exc), param_hint="--raw") from None


def _finishing_steps(post_process_mask: bool, alpha_matting: bool, foreground: int, background: int, erode: int,
                     method: str) -> list:
    import functools

    from mtc.errors import MtcError
    from mtc.runtime.refine import AlphaMatting, clean_mask, refine_alpha, require_pymatting

    steps = [clean_mask] if post_process_mask else []
    if alpha_matting:
        try:
            options = AlphaMatting(foreground_threshold=foreground, background_threshold=background,
                                   erode_size=erode, method=method)
        except MtcError as exc:  # a flag out of line with another: a usage error (exit 2)
            raise click.UsageError(str(exc)) from None
        require_pymatting()  # before the model loads, not at the first image
        steps.append(functools.partial(refine_alpha, options=options))
    return steps


def _warn_about_coverage(manifest, tally, *, every_frame: bool) -> None:
    """Say so when mattes came out almost empty or full, and what the model is for.

    For video, only when every frame did (a subject may leave the shot for a while); for images,
    when any did. The wording comes from the manifest and the model registry, never from here.
    """
    for count, first, state in ((tally.empty, tally.first_empty, "almost empty"),
                                (tally.full, tally.first_full, "almost fully opaque")):
        if not count or (every_frame and count < tally.mattes):
            continue
        if tally.mattes == 1:
            what = "the matte"
        elif count == tally.mattes:
            what = f"every matte ({count})"
        else:
            what = f"{count} of {tally.mattes} mattes (first: {first})"
        click.echo(f"warning: {what} came out {state}: {_purpose_hint(manifest)}", err=True)


def _purpose_hint(manifest) -> str:
    """'rvm mattes people (video matting); for objects use u2net or u2netp', from the registry's data."""
    from mtc.errors import MtcError
    from mtc.models.registry import list_models

    try:
        specs = list_models()
    except MtcError:
        specs = []
    own = next((spec for spec in specs if spec.name == manifest.model), None)
    task = manifest.task.replace("_", " ")
    if own is None or not own.purpose:
        return f"{manifest.model} ({task}) found no subject it knows here; `mtc models` shows what each model is for"
    others: dict[str, list[str]] = {}
    for spec in specs:
        if spec.purpose and spec.purpose != own.purpose:
            others.setdefault(spec.purpose, []).append(spec.name)
    suggestions = "; ".join(f"for {purpose} use {' or '.join(names)}" for purpose, names in others.items())
    return f"{manifest.model} mattes {own.purpose} ({task})" + (f"; {suggestions}" if suggestions else "")


def _image_path_for(output: Path, renderer) -> Path:
    if renderer.has_alpha and output.suffix.lower() not in (".png", ".webp", ".tif", ".tiff"):
        from mtc.errors import MtcError

        raise MtcError(f"{output.name}: RGBA output needs a format with alpha", hint="use a .png output")
    return output


def _write_image(session, source: Path, output: Path, renderer, *, replace: bool,
                 png_compression: int = DEFAULT_PNG_COMPRESSION) -> None:
    from mtc.runtime.images import read_image

    session.reset()  # images are independent: no state carried from the previous one
    matte = session.process(read_image(source), name=source.name)
    _save_matte(output, matte, renderer, replace=replace, png_compression=png_compression)


def _save_matte(output: Path, matte, renderer, *, replace: bool, png_compression: int) -> None:
    from mtc.runtime.images import write_image

    write_image(_image_path_for(output, renderer), renderer.render(matte), png_compression=png_compression,
                replace=replace)


def _run_images(session, source: Path, output: Path, renderer, force: bool,
                png_compression: int = DEFAULT_PNG_COMPRESSION) -> int:
    """Matte a folder's images into `output`, decoding the next image and encoding the last one
    while the model runs (mtc.runtime.apply.matte_images)."""
    from mtc.errors import MtcError
    from mtc.runtime.apply import matte_images
    from mtc.runtime.images import list_images, read_image
    from mtc.runtime.progress import frame_progress

    images = list_images(source)
    output.mkdir(parents=True, exist_ok=True)
    suffix = ".png" if renderer.has_alpha or renderer.kind == "alpha" else None

    def target(path: Path) -> Path:
        return output / (path.stem + (suffix or path.suffix))

    def read(path: Path):
        if target(path).exists() and not force:
            raise MtcError(f"{target(path)} already exists", hint="pass --force to overwrite")
        return read_image(path)

    def write(path: Path, matte) -> None:
        _save_matte(target(path), matte, renderer, replace=force, png_compression=png_compression)

    with frame_progress("matting images", total=len(images)) as advance:
        return matte_images(session, images, read, write, on_image=lambda path: advance())


def _watch_images(session, source: Path, output: Path, renderer, force: bool,
                  png_compression: int = DEFAULT_PNG_COMPRESSION) -> int:
    """Matte the folder's images, then each new one, until Ctrl-C or SIGTERM; images whose output
    exists are skipped at the start unless --force."""
    from mtc.runtime.apply import watch_folder

    output.mkdir(parents=True, exist_ok=True)
    suffix = ".png" if renderer.has_alpha or renderer.kind == "alpha" else None

    def target(path: Path) -> Path:
        return output / (path.stem + (suffix or path.suffix))

    def matte(path: Path) -> None:
        _write_image(session, path, target(path), renderer, replace=True, png_compression=png_compression)
        click.echo(f"{path.name} -> {target(path)}")
        tally = session.tally
        if tally.empty + tally.full == 1 and path.name in (tally.first_empty, tally.first_full):
            # A watch runs for hours: say it at the first such image, not when it is stopped.
            _warn_about_coverage(session.manifest, session.tally, every_frame=False)

    click.echo(f"watching {source} (Ctrl-C stops)", err=True)
    with _stop_on_signal() as stop:
        return watch_folder(source, matte, done=lambda path: not force and target(path).exists(), stop=stop)


@contextlib.contextmanager
def _stop_on_signal():
    """An event that Ctrl-C or SIGTERM sets, so the image in hand is finished, written and
    counted before the watch ends; a second signal interrupts at once (partial files are
    removed as on any interrupt)."""
    import signal
    import threading

    stop = threading.Event()

    def on_signal(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        click.echo("stopping after the current image (Ctrl-C again to stop now)", err=True)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _run_raw(session, size: tuple[int, int], output: Path, renderer, force: bool):
    """Raw rgb24 frames from standard input, in order, recurrent state carried from frame to frame."""
    from mtc.runtime.apply import matte_stream
    from mtc.runtime.video_reader import read_raw_frames

    width, height = size
    frames = read_raw_frames(sys.stdin.buffer, width, height)
    sink = _raw_stdout() if str(output) == STDIO else _numbered_files(output, renderer, force)
    with sink as write:
        return matte_stream(session, frames, write, renderer)


@contextlib.contextmanager
def _raw_stdout():
    """Frames as raw bytes on standard output, which holds nothing else: for the run, file
    descriptor 1 points at stderr (native libraries' prints included), and the frames go to a
    duplicate of the real stdout."""
    from mtc.errors import MtcError

    sys.stdout.flush()
    frames_out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            def write(picture):
                try:
                    frames_out.write(picture.tobytes())  # C order, whatever the array's layout
                except BrokenPipeError:
                    raise MtcError("standard output was closed before the last frame",
                                   hint="keep the reading program running until mtc ends") from None

            yield write
    finally:
        os.dup2(frames_out.fileno(), 1)
        with contextlib.suppress(BrokenPipeError):
            frames_out.close()


@contextlib.contextmanager
def _numbered_files(pattern: Path, renderer, force: bool):
    """Frame n (from 1) to pattern % n, e.g. out/%06d.png -> out/000001.png, each written atomically."""
    from mtc.runtime.images import write_image

    _image_path_for(pattern, renderer)
    pattern.parent.mkdir(parents=True, exist_ok=True)
    numbers = itertools.count(1)
    def path(number: int) -> Path:
        return pattern.with_name(FRAME_PATTERN.sub(lambda field: field[0] % number, pattern.name, count=1))

    yield lambda picture: write_image(path(next(numbers)), picture, png_compression=1, replace=force)


def _run_video(session, input: str, output: Path, renderer, x264_preset: str, encoder: str, force: bool):
    from mtc.runtime.apply import matte_stream
    from mtc.runtime.progress import frame_progress
    from mtc.runtime.video_reader import VideoReader

    # Frame times travel beside the pipeline, in order: the decode thread appends a frame's time
    # before the frame enters the pipeline, the writer takes it when the frame comes out.
    times: collections.deque = collections.deque()
    if input == BUILTIN:
        from mtc.data.builtin_clip import ClipSpec, builtin_frames

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
    from mtc.runtime.video_writer import VideoWriter

    with VideoWriter(output, width=size[0], height=size[1], fps=fps, kind="rgba" if renderer.has_alpha else "rgb",
                     audio_from=audio, x264_preset=x264_preset, timed=timed, encoder=encoder,
                     replace=replace) as writer:
        yield lambda picture, time: writer.write(picture, time=time)


@contextlib.contextmanager
def _frame_folder(output: Path, force: bool):
    """Numbered PNGs (000001.png, ...) in a folder that appears only when the video is done.
    --force replaces only a folder of such frames, never one holding anything else."""
    from mtc.errors import MtcError
    from mtc.fsutil import atomic_dir
    from mtc.runtime.images import write_image

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
