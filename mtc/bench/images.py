"""`mtc bench` on a folder of images: each image matted at its own size, scored against the
ground-truth alpha with the same file stem.

Images are independent: the session is reset before each one, and there is no time axis (no
dtSSD, no end-to-end video pipeline). Latency is per image, so it includes whatever a backend
pays for a size it has not seen yet, as a folder run pays it.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from mtc.bench.accuracy import StreamingMetrics, as_alpha
from mtc.bench.data import read_alpha, resize_alpha
from mtc.bench.measure import Clock
from mtc.bench.memory import PeakMemory
from mtc.bench.stats import latency_stats
from mtc.errors import MtcError

log = logging.getLogger("mtc")

IMAGES = "images"  # the result's "resolution": images keep their own sizes


def pair_by_stem(images: Path, ground_truth: Path | None) -> list[tuple[Path, Path | None]]:
    """Each image of the folder with its ground truth (same file stem, any image extension).

    Raises:
        MtcError: a stem appears twice in a folder, or an image has no ground truth.
    """
    from mtc.runtime.images import list_images

    pictures = _by_stem(list_images(images), images)
    if ground_truth is None:
        return [(path, None) for path in pictures.values()]
    if not ground_truth.is_dir():
        raise MtcError(f"--gt {ground_truth} is not a folder, but --input {images} is",
                       hint="pass a folder of alpha images named like the input images")
    truths = _by_stem(list_images(ground_truth), ground_truth)
    missing = [stem for stem in pictures if stem not in truths]
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise MtcError(f"{len(missing)} image(s) in {images} have no ground truth in {ground_truth}: {shown}",
                       hint="give every image an alpha image with the same file stem (photo.jpg -> photo.png)")
    extra = len(truths) - len(pictures)
    if extra > 0:
        log.warning("%d ground-truth image(s) in %s have no input image and are not scored", extra, ground_truth)
    return [(path, truths[stem]) for stem, path in pictures.items()]


def _by_stem(paths: list[Path], folder: Path) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for path in paths:
        if path.stem in out:
            raise MtcError(f"{folder} holds two images named {path.stem!r} ({out[path.stem].name}, {path.name})",
                           hint="keep one file per stem: images are paired with ground truth by stem")
        out[path.stem] = path
    return out


def bench_image_folder(session, pairs: list[tuple[Path, Path | None]], *, metrics, warmup: int, reference=None,
                       clock: Clock = time.perf_counter) -> dict:
    """Matte every image once (after `warmup` untimed runs on the first), timing `session.process`,
    and score the alpha against the ground truth and/or the reference session.

    The prediction is resized to the ground truth's size when they differ, as the SOD toolkits
    evaluate. Returns one result in the shape of `mtc.bench.runner.bench_resolution`'s, with
    "resolution" "images", no end-to-end timing and no GFLOPs (sizes differ).
    """
    from mtc.runtime.images import read_image

    if not pairs:
        raise MtcError("no images to benchmark", hint="put images in the --input folder")
    first = read_image(pairs[0][0])
    for _ in range(warmup):
        session.process(first)
    scored = any(truth is not None for _, truth in pairs)
    vs_gt = StreamingMetrics(metrics) if scored else None
    vs_reference = StreamingMetrics(metrics) if reference is not None else None
    seconds = []
    with PeakMemory() as memory:
        for index, (path, truth) in enumerate(pairs):
            picture = first if index == 0 else read_image(path)
            _reset(session)
            start = clock()
            matte = session.process(picture)
            seconds.append(clock() - start)
            alpha = as_alpha(matte.alpha)
            if vs_reference is not None:
                _reset(reference)
                vs_reference.add(alpha, as_alpha(reference.process(picture).alpha))
            if vs_gt is not None:
                gt = read_alpha(truth)
                height, width = gt.shape
                vs_gt.add(np.asarray(resize_alpha(alpha, width, height)), gt if gt.dtype == np.uint8 else as_alpha(gt))
    return {
        "resolution": IMAGES,
        "width": None,
        "height": None,
        "model_input": None,
        "downsample_ratio": None,
        "frames": len(pairs),
        "model": latency_stats(seconds),
        "end_to_end": None,
        "memory": {**memory.as_dict(), "device_peak_bytes": None},
        "cost": {"gflops_per_frame": None, "achieved_gflops_per_s": None},
        "accuracy": {"reference": vs_reference.result() if vs_reference else None,
                     "gt": vs_gt.result() if vs_gt else None},
    }


def _reset(session) -> None:
    reset = getattr(session, "reset", None)
    if callable(reset):
        reset()
