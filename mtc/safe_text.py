"""Text mtc did not write (manifest strings, file names), made safe to show in a terminal.

A manifest is data from whoever made the artifact. Printed as it is, an ESC sequence in a model
name can clear the screen, retitle the window or hide the lines after it, and rich would read
`[link=...]` in it as markup. Every such string goes through `printable` (plain output) or
`plain` (a rich cell or line, never parsed as markup).
"""

from __future__ import annotations

import re

# C0 and C1 control characters, DEL, and the bidirectional overrides that reorder what follows.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def printable(text: object) -> str:
    """`text` with every control character shown as its escape (ESC as \\x1b, a newline as \\n)."""
    return _UNSAFE.sub(lambda match: match.group().encode("unicode_escape").decode("ascii"), str(text))


def plain(text: object):
    """A rich Text of `printable(text)`: shown literally, never interpreted as markup."""
    from rich.text import Text

    return Text(printable(text))
