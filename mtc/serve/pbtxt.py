"""Protobuf text format for Triton's `config.pbtxt`, written from plain Python data.

Writing the text ourselves keeps `mtc package` free of the `tritonclient` dependency; the tests
parse every generated file with Triton's own protobuf, so a mistake here cannot go unseen.
"""

from __future__ import annotations

import json
from typing import Any


class Enum(str):
    """An enum value, written bare (TYPE_FP32) where a string would be quoted."""


def to_pbtxt(message: dict[str, Any], indent: int = 0) -> str:
    """A message as protobuf text: dicts are messages, lists repeated fields, Enum bare words."""
    pad = "  " * indent
    lines = []
    for key, value in message.items():
        if value is None:
            continue
        if isinstance(value, dict):
            lines.append(f"{pad}{key} {{\n{to_pbtxt(value, indent + 1)}{pad}}}")
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            blocks = ",\n".join(f"{pad}  {{\n{to_pbtxt(item, indent + 2)}{pad}  }}" for item in value)
            lines.append(f"{pad}{key} [\n{blocks}\n{pad}]")
        elif isinstance(value, list):
            lines.append(f"{pad}{key}: [ {', '.join(_scalar(v) for v in value)} ]")
        else:
            lines.append(f"{pad}{key}: {_scalar(value)}")
    return "".join(line + "\n" for line in lines)


def _scalar(value: Any) -> str:
    if isinstance(value, Enum):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    # A JSON string literal (non-ASCII kept as UTF-8) is a valid protobuf text string.
    return json.dumps(str(value), ensure_ascii=False)
