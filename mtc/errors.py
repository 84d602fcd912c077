"""The one exception type users see.

Every failure caused by input (weights, files, shapes, disk) is raised as `MtcError` with a
one-line message naming the problem and a hint naming the fix. The CLI prints exactly that
line and exits non-zero; anything else is a bug and keeps its traceback.
"""


class MtcError(Exception):
    """A user-facing error: a one-line problem statement plus a one-line fix."""

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} (hint: {self.hint})" if self.hint else self.message


def exception_summary(exc: BaseException, limit: int = 300) -> str:
    """One line that says what went wrong inside a library exception.

    Native libraries put source locations first ("Exception from src/...cpp:117:") and the cause
    further down; the first line that is not such a location is the one worth showing.
    """
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    meaningful = [line for line in lines if not (line.startswith("Exception from ") and line.endswith(":"))]
    return ((meaningful or lines or [type(exc).__name__])[0])[:limit]
