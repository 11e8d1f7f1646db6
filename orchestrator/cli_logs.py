"""`modelyard logs -f`: which lines of a service's log are new.

The admin API only gives the last N lines of the log (GET
/admin/services/{id}/logs?lines=N), with no offset, so following it means
comparing each answer with the one before:

- while the whole file fits in the window (the answer has fewer lines than
  asked for), line counts are exact: the new lines are what follows the old
  answer, however often a line repeats;
- a file that shrank, or whose start changed, was rotated (.log -> .log.1) or
  truncated: all of it is new;
- past the window, the new lines are what follows the latest place where the
  old answer's end lines up with the new one. A log whose last lines repeat
  exactly across the whole window is ambiguous there: it is read as
  unchanged.
"""

from __future__ import annotations

FOLLOW_WINDOW = 1000  # lines asked for on every poll
MAX_WINDOW = 10000  # the admin API's limit


def end_of_old(seen: list[str], new: list[str]) -> int:
    """How many lines at the start of `new` the previous answer `seen` already
    held: the largest j where new[:j] ends with seen's last lines (all of
    seen, or the j lines when seen is longer). 0 when nothing lines up."""
    if not seen:
        return 0
    for j in range(len(new), 0, -1):
        if new[j - 1] != seen[-1]:
            continue  # cheap test first: most positions fail here
        k = min(j, len(seen))
        if new[j - k:j] == seen[len(seen) - k:]:
            return j
    return 0


class LogFollower:
    """Feed it each answer's lines; it returns those not returned before."""

    def __init__(self, window: int = FOLLOW_WINDOW) -> None:
        self.window = window
        self.seen: list[str] = []
        self.whole = True  # `seen` is the whole file (an empty one to begin with)
        self.skipped = False  # the last update may have missed lines (more came than a window holds)

    def update(self, lines: list[str]) -> list[str]:
        whole = len(lines) < self.window
        fresh = self.fresh(lines, whole)
        self.skipped = bool(self.seen) and not whole and len(fresh) == len(lines)
        if self.skipped:  # more than a window between two polls: look further back next time
            self.window = min(MAX_WINDOW, self.window * 2)
        self.seen, self.whole = lines, whole
        return fresh

    def fresh(self, lines: list[str], whole: bool) -> list[str]:
        if whole and self.whole:
            grew = len(lines) >= len(self.seen) and lines[:len(self.seen)] == self.seen
            return lines[len(self.seen):] if grew else lines
        if whole and len(lines) < len(self.seen):  # fewer lines than the file had: a new file
            return lines
        return lines[end_of_old(self.seen, lines):]
