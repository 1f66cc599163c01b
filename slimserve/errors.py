"""Errors a user can act on, and the exit codes every command shares."""

from __future__ import annotations

from typing import Final

EXIT_OK: Final = 0
EXIT_INTERNAL: Final = 1
EXIT_INVALID: Final = 2
EXIT_ROLLED_BACK: Final = 3
EXIT_INCONCLUSIVE: Final = 4


class SlimserveError(Exception):
    """Base of the errors slimserve raises on purpose."""


class InvalidInput(SlimserveError):
    """Bad input from the user: a spec field, a file, a shape. Exit code 2, no traceback.

    `problems` holds one line per problem: the field, the value and the fix.
    """

    def __init__(self, problems: list[str] | str, source: str | None = None) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.source = source
        super().__init__(self.render())

    def render(self) -> str:
        head = f"{self.source}: " if self.source else ""
        if len(self.problems) == 1:
            return head + self.problems[0]
        return head + f"{len(self.problems)} problems:\n" + "\n".join(f"  - {p}" for p in self.problems)


class ServingError(SlimserveError):
    """A serving component (Triton, Prometheus, Locust) is missing, failed to start or died. Exit 1."""
