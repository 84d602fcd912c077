"""mtc.runtime.apply's image helpers: the folder watch, the finishing wrapper and the coverage tally."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from mtc.errors import MtcError
from mtc.runtime.apply import WATCH_GRACE_POLLS, CoverageTally, FinishedSession, watch_folder


class Script:
    """A fake `sleep` that runs one scripted change of the folder per poll, then stops the watch."""

    def __init__(self, changes):
        self.changes = list(changes)
        self.stop = threading.Event()

    def __call__(self, seconds: float) -> None:
        if self.changes:
            self.changes.pop(0)()
        else:
            self.stop.set()


def test_a_growing_file_is_handled_once_it_stops_growing(tmp_path):
    image = tmp_path / "a.png"
    image.write_bytes(b"x" * 10)
    seen = []
    script = Script([lambda: image.write_bytes(b"x" * 20),  # poll 2 sees it grown: not ready
                     lambda: None,                          # poll 3: the same as poll 2: ready
                     lambda: None])
    count = watch_folder(tmp_path, lambda path: seen.append(path.stat().st_size), stop=script.stop, sleep=script)
    assert seen == [20] and count == 1


def test_skips_done_files_hidden_files_and_non_images(tmp_path):
    (tmp_path / "done.png").write_bytes(b"x")
    (tmp_path / ".part.png").write_bytes(b"x")
    (tmp_path / "notes.txt").write_bytes(b"x")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "new.jpg").write_bytes(b"x")
    seen = []
    script = Script([lambda: None, lambda: None])
    watch_folder(tmp_path, lambda path: seen.append(path.name), done=lambda path: path.name == "done.png",
                 stop=script.stop, sleep=script)
    assert seen == ["new.jpg"]


def test_an_unreadable_file_is_retried_when_it_changes_and_reported_when_it_does_not(tmp_path, caplog):
    broken, healed = tmp_path / "broken.png", tmp_path / "healed.png"
    broken.write_bytes(b"x")
    healed.write_bytes(b"x")
    calls = []

    def handle(path: Path) -> None:
        calls.append((path.name, path.stat().st_size))
        if path.stat().st_size < 2:
            raise MtcError(f"cannot read image {path.name}", hint="re-export it")

    script = Script([lambda: None, lambda: healed.write_bytes(b"xy")] + [lambda: None] * (WATCH_GRACE_POLLS + 2))
    count = watch_folder(tmp_path, handle, stop=script.stop, sleep=script)
    assert calls == [("broken.png", 1), ("healed.png", 1), ("healed.png", 2)] and count == 1
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert skipped == ["skipped broken.png: cannot read image broken.png (hint: re-export it)"]


def test_keyboard_interrupt_ends_the_watch_with_the_count(tmp_path):
    def interrupt(seconds: float) -> None:
        raise KeyboardInterrupt

    assert watch_folder(tmp_path, lambda path: None, sleep=interrupt) == 0


class FakeMatte:
    def __init__(self, alpha):
        self.alpha = alpha

    def copy(self):
        return FakeMatte(np.array(self.alpha))


class FakeSession:
    def __init__(self, alpha):
        self.alpha = alpha
        self.manifest = "the manifest"

    def process(self, frame):
        return FakeMatte(self.alpha)  # the same buffer every time, as a backend's output


def test_finished_session_applies_steps_to_a_copy_and_tallies_coverage():
    buffer = np.full((10, 10), 0.25, np.float32)
    tally = CoverageTally()
    session = FinishedSession(FakeSession(buffer), [lambda alpha, frame: alpha * 2, lambda alpha, frame: alpha + frame],
                              tally)
    matte = session.process(np.float32(0.1), name="one.png")
    np.testing.assert_allclose(matte.alpha, 0.6)  # (0.25 * 2) + 0.1, in order
    np.testing.assert_array_equal(buffer, 0.25)  # the session's buffer is left alone
    assert session.manifest == "the manifest"  # everything else passes through
    assert (tally.mattes, tally.empty, tally.full, tally.first_full) == (1, 0, 1, "one.png")  # all >= 0.5


@pytest.mark.parametrize(("opaque_pixels", "state"), [(0, "empty"), (1, "neither"), (199, "neither"), (200, "full")])
def test_coverage_margins(opaque_pixels, state):
    # 200 pixels: under 0.5% opaque (0 of 200) is empty, over 99.5% (200 of 200) full; 1 and 199 are neither.
    alpha = np.zeros(200, np.float32)
    alpha[:opaque_pixels] = 0.5  # at least half opaque counts
    tally = CoverageTally()
    tally.add(alpha, "x")
    assert (tally.empty, tally.full) == {"empty": (1, 0), "full": (0, 1), "neither": (0, 0)}[state]


# ---- image folders: reading and writing overlapped with inference --------------------------------


class BufferSession:
    """Writes each frame's mean into one alpha buffer it reuses, as a backend's output; counts resets."""

    def __init__(self, on_process=None):
        self.buffer = np.zeros((4, 4), np.float32)
        self.resets = 0
        self.on_process = on_process

    def reset(self):
        self.resets += 1

    def process(self, frame):
        from mtc.runtime.session import Matte

        if self.on_process:
            self.on_process()
        self.buffer[:] = frame.mean()
        return Matte(self.buffer, source=frame)


def _frames(count):
    return {Path(f"{i}.png"): np.full((4, 4, 3), i, np.uint8) for i in range(count)}


def test_matte_images_writes_each_image_its_own_matte_in_order():
    from mtc.runtime.apply import matte_images

    frames, written = _frames(6), []
    session = BufferSession()

    def write(path, matte):
        time.sleep(0.02)  # a slow encoder: the model has moved on to the next image meanwhile
        written.append((path, float(matte.alpha[0, 0])))

    count = matte_images(session, list(frames), frames.__getitem__, write)
    # The buffer is reused: without a copy, a matte waiting for the writer would show a later image.
    assert written == [(path, float(i)) for i, path in enumerate(frames)]
    assert count == 6 and session.resets == 6


def test_matte_images_reads_the_next_image_while_the_model_runs():
    from mtc.runtime.apply import matte_images

    frames, reads = _frames(3), []
    next_read = threading.Event()

    def read(path):
        reads.append(path)
        if len(reads) == 2:
            next_read.set()
        return frames[path]

    def process():
        if len(reads) == 1:  # the first image: the reader fetches the second meanwhile
            assert next_read.wait(10), "the next image was not read during inference"

    assert matte_images(BufferSession(process), list(frames), read, lambda path, matte: None) == 3


def test_matte_images_stops_at_a_bad_image_with_the_ones_before_it_written():
    from mtc.runtime.apply import matte_images

    frames, written = _frames(5), []

    def read(path):
        if path.name == "3.png":
            raise MtcError("cannot read image 3.png")
        return frames[path]

    with pytest.raises(MtcError, match="3.png"):
        matte_images(BufferSession(), list(frames), read, lambda path, matte: written.append(path.name))
    assert written == ["0.png", "1.png", "2.png"]


def test_matte_images_raises_a_write_error_and_stops():
    from mtc.runtime.apply import matte_images

    frames, written = _frames(5), []

    def write(path, matte):
        if path.name == "1.png":
            raise MtcError("disk full")
        written.append(path.name)

    with pytest.raises(MtcError, match="disk full"):
        matte_images(BufferSession(), list(frames), frames.__getitem__, write)
    assert written == ["0.png"]
