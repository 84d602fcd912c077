"""Loading PyTorch checkpoints: a file the safe loader refuses is reported as refused, and why."""

from __future__ import annotations

import os
import zipfile

import pytest

from mtc.errors import MtcError

torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install 'mtc[export]')")

from mtc.export.torch_export import read_state_dict  # noqa: E402  (needs torch)


class _RunsACommand:
    """Unpickling this calls os.system: what a malicious checkpoint carries."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _assert_refusal_reads_as_a_refusal(exc: MtcError) -> None:
    text = str(exc)
    assert "refused to load checkpoint" in text and "could run code" in text
    # torch's own text suggests turning the protection off; none of it may reach the user.
    for advice in ("weights_only", "set to False", "trusted source", "add_safe_globals"):
        assert advice not in text, text
    assert "\n" not in text


def test_a_checkpoint_that_would_run_code_is_refused_and_says_why(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"weight": torch.zeros(2), "payload": _RunsACommand(marker)}, path)
    with pytest.raises(MtcError) as info:
        read_state_dict(path)
    _assert_refusal_reads_as_a_refusal(info.value)
    assert "(posix.system)" in info.value.message or "(os.system)" in info.value.message
    assert "official checkpoint" in info.value.hint
    assert not marker.exists()  # the payload never ran


def test_a_damaged_pickle_inside_a_checkpoint_is_refused_without_torchs_advice(tmp_path):
    good = tmp_path / "good.pth"
    torch.save({"weight": torch.zeros(2)}, good)
    damaged = tmp_path / "damaged.pth"
    with zipfile.ZipFile(good) as source, zipfile.ZipFile(damaged, "w") as target:
        for name in source.namelist():
            data = source.read(name)
            target.writestr(name, b"\x80\x02\xff" + data[3:] if name.endswith("data.pkl") else data)
    with pytest.raises(MtcError) as info:
        read_state_dict(damaged)
    _assert_refusal_reads_as_a_refusal(info.value)
    assert "Unsupported operand 255" in info.value.message


def test_a_plain_state_dict_loads(tmp_path):
    path = tmp_path / "plain.pth"
    torch.save({"module.weight": torch.ones(3)}, path)
    state = read_state_dict(path)
    assert list(state) == ["weight"] and torch.equal(state["weight"], torch.ones(3))
