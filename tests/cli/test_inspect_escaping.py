"""`mtc inspect` shows manifest strings literally: no terminal escape runs, no rich markup is read."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from tiny_artifacts import edit_manifest, write_tiny_artifact

HOSTILE = "\x1b[2J\x1b]0;owned\x07[red][link=file:///etc/passwd]x[/link][/red]\u202eevil"


@pytest.mark.parametrize("field", ["model", "variant", "license"])
def test_manifest_strings_reach_the_terminal_escaped(tmp_path, field):
    artifact = write_tiny_artifact(tmp_path / "tiny")
    edit_manifest(artifact, lambda d: d.update({field: HOSTILE}))
    env = {**os.environ, "FORCE_COLOR": "1", "COLUMNS": "400"}  # as on a terminal, where markup would render
    result = subprocess.run([sys.executable, "-m", "mtc", "inspect", artifact, "-r", "64x48"], capture_output=True,
                            text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    shown = result.stdout
    assert "\x1b[2J" not in shown and "\x1b]0;" not in shown and "\x07" not in shown and "\u202e" not in shown
    assert "\\x1b[2J\\x1b]0;owned\\x07[red][link=file:///etc/passwd]x[/link][/red]\\u202eevil" in shown
    assert "\x1b]8;" not in shown  # no hyperlink made from the markup


def test_a_hostile_name_in_an_error_is_escaped(tmp_path):
    artifact = write_tiny_artifact(tmp_path / "tiny")
    edit_manifest(artifact, lambda d: d["files"].update({"\x1b[2Jx": {"sha256": "0" * 64, "size": 1}}))
    result = subprocess.run([sys.executable, "-m", "mtc", "inspect", artifact], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 1
    assert "\x1b[2J" not in result.stderr and "\\x1b[2Jx" in result.stderr
