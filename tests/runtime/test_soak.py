"""Soak: 10,000 frames through the runtime's video pipeline with recurrent state and scene cuts,
and a folder of 1,000 images of mixed sizes; memory (RSS) and disk stay flat.

A tiny recurrent model keeps this to well under a minute on 2 cores, so the models' own cost
does not hide what the runtime holds on to. The figures in docs/reliability.md come from
`pytest -s -m slow tests/runtime/test_soak.py`, which prints them.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

import mtc.runtime
from mtc.artifact.manifest import MANIFEST_NAME, Manifest, ModelIO, Precision, StatePair, TensorSpec, file_entry
from mtc.runtime.apply import CoverageTally, FinishedSession, make_renderer, matte_stream

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads RSS from /proc")]

MIB = 2**20
# Headroom for allocator noise over thousands of frames: a leak of one 64x48 float frame per
# frame would be 120 MB over 10,000 frames, one PNG per image 9 MB over the folder.
RSS_GROWTH_LIMIT = 24 * MIB


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _disk(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _recurrent_artifact(folder: Path) -> Path:
    """alpha = sigmoid(conv(image) + state); state' = 0.9 state + 0.1 mean(image): state that matters."""
    rng = np.random.default_rng(11)
    weight = numpy_helper.from_array(rng.normal(0, 0.5, (1, 3, 3, 3)).astype(np.float32), "w")
    decay = numpy_helper.from_array(np.array(0.9, np.float32), "decay")
    share = numpy_helper.from_array(np.array(0.1, np.float32), "share")
    nodes = [helper.make_node("Conv", ["img", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["c", "s_in"], ["z"]),
             helper.make_node("Sigmoid", ["z"], ["alpha"]),
             helper.make_node("ReduceMean", ["img"], ["m"], keepdims=1),
             helper.make_node("Mul", ["s_in", "decay"], ["kept"]),
             helper.make_node("Mul", ["m", "share"], ["added"]),
             helper.make_node("Add", ["kept", "added"], ["s_out"])]
    graph = helper.make_graph(
        nodes, "recurrent", [helper.make_tensor_value_info("img", TensorProto.FLOAT, [1, 3, "h", "w"]),
                             helper.make_tensor_value_info("s_in", TensorProto.FLOAT, [1, 1, 1, 1])],
        [helper.make_tensor_value_info("alpha", TensorProto.FLOAT, [1, 1, "h", "w"]),
         helper.make_tensor_value_info("s_out", TensorProto.FLOAT, [1, 1, 1, 1])],
        initializer=[weight, decay, share])
    folder.mkdir(parents=True)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(folder / "model.onnx"))
    io = ModelIO(inputs=(TensorSpec("img", "image", shape=(1, 3, "h", "w")),
                         TensorSpec("s_in", "state", shape=(1, 1, 1, 1))),
                 outputs=(TensorSpec("alpha", "alpha", shape=(1, 1, "h", "w"), value_range=(0.0, 1.0)),
                          TensorSpec("s_out", "state", shape=(1, 1, 1, 1))),
                 states=(StatePair("s_in", "s_out", initial_shape=(1, 1, 1, 1)),))
    manifest = Manifest(model="soak", variant="recurrent", task="video_matting", license="MIT",
                        model_file="model.onnx", io=io, precision=Precision(),
                        files={"model.onnx": file_entry(folder / "model.onnx")})
    (folder / MANIFEST_NAME).write_text(manifest.to_json())
    return folder


SHOT_FRAMES = 250  # a scene cut every 250 frames: 39 cuts in 10,000 frames


def _shots(count: int):
    """Frames of alternating shots (dark and bright, each with a little motion)."""
    rng = np.random.default_rng(0)
    scenes = [rng.integers(0, 80, (48, 64, 3), dtype=np.uint8), rng.integers(170, 256, (48, 64, 3), dtype=np.uint8)]
    for index in range(count):
        yield np.roll(scenes[(index // SHOT_FRAMES) % 2], index % 64, axis=1)


def test_ten_thousand_frames_with_state_and_scene_cuts_hold_memory_and_disk_flat(tmp_path, monkeypatch):
    monkeypatch.setenv("MTC_CACHE", str(tmp_path / "cache"))
    session = mtc.runtime.load(_recurrent_artifact(tmp_path / "artifact"), backend="onnxruntime", threads=1,
                               allow_spinning=False)
    renderer = make_renderer("composite", "green")
    written = []

    def write(picture):
        written.append(picture.shape)
        if len(written) == 1000:  # warmed up: buffers, ORT arenas and queues are at their size
            baseline.update(rss=_rss(), disk=_disk(tmp_path))

    baseline: dict[str, int] = {}
    stats = matte_stream(session, _shots(10_000), write, renderer)
    growth, disk_growth = _rss() - baseline["rss"], _disk(tmp_path) - baseline["disk"]
    print(f"\nsoak 10,000 frames: RSS {baseline['rss'] / MIB:.1f} MiB after 1,000 -> {_rss() / MIB:.1f} MiB "
          f"(+{growth / MIB:.2f}); disk +{disk_growth} B; {session.state_resets} state resets")
    assert stats.frames == 10_000 and len(written) == 10_000
    assert session.state_resets == 10_000 // SHOT_FRAMES - 1  # every cut, and nothing else, resets
    assert growth < RSS_GROWTH_LIMIT
    assert disk_growth == 0


def _image_folder_soak(tmp_path: Path) -> dict:
    """Matte 1,000 images of mixed sizes after 100 to warm up; what the RSS, the cache and the
    outputs did. Runs in a fresh interpreter (see the test): the reader and writer threads of
    `matte_images` allocate from the heap of whatever process runs them, and after the rest of
    the suite that heap's fragmentation, not this path, dominates its RSS."""
    from mtc.cli.run import _run_images

    os.environ["MTC_CACHE"] = str(tmp_path / "cache")
    rng = np.random.default_rng(5)
    source = tmp_path / "photos"
    source.mkdir()
    sizes = set()
    for index in range(1000):
        height, width = (int(v) for v in rng.integers(16, 97, 2))
        sizes.add((height, width))
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(source / f"{index:04d}.png")
    # As `mtc run` wraps it: finishing steps (none here) and the empty-matte tally.
    session = FinishedSession(mtc.runtime.load(_recurrent_artifact(tmp_path / "artifact"), backend="onnxruntime",
                                               threads=1), tally=CoverageTally())
    renderer = make_renderer("alpha", None)

    warm = tmp_path / "warm"
    warm.mkdir()
    for path in sorted(source.iterdir())[:100]:  # the first 100 sizes: buffers and arenas settle
        (warm / path.name).symlink_to(path)
    _run_images(session, warm, tmp_path / "warm-out", renderer, force=False)
    rss, cache = _rss(), _disk(tmp_path / "cache") if (tmp_path / "cache").exists() else 0
    count = _run_images(session, source, tmp_path / "out", renderer, force=False)
    return {"count": count, "sizes": len(sizes), "rss": rss, "growth": _rss() - rss,
            "cache_growth": (_disk(tmp_path / "cache") if (tmp_path / "cache").exists() else 0) - cache}


def test_a_thousand_images_of_mixed_sizes_hold_memory_and_disk_flat(tmp_path):
    import json
    import subprocess

    script = (f"import json, sys; from pathlib import Path; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
              f"import test_soak; print(json.dumps(test_soak._image_folder_soak(Path({str(tmp_path)!r}))))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    source = tmp_path / "photos"
    outputs = sorted((tmp_path / "out").iterdir())
    print(f"\nsoak 1,000 images, {result['sizes']} sizes: RSS {result['rss'] / MIB:.1f} MiB "
          f"(+{result['growth'] / MIB:.2f}); cache +{result['cache_growth']} B; "
          f"outputs {_disk(tmp_path / 'out') / MIB:.1f} MiB")
    assert result["count"] == 1000 and len(outputs) == 1000 and not any(p.name.startswith(".") for p in outputs)
    assert all(Image.open(p).size == Image.open(source / p.name).size for p in outputs[::97])
    assert result["growth"] < RSS_GROWTH_LIMIT
    assert result["cache_growth"] == 0  # mixed sizes add nothing to the cache on this path
