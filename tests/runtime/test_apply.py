"""mtc.runtime.apply's image helpers: the folder watch, the finishing wrapper and the coverage tally."""

from __future__ import annotations

import threading
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
