"""The one admission controller over a Session's stream slots.

Everything that takes a slot asks it: the scheduler for each request that waits for a fresh
stream, a server before it loads a persistent stream or hands a request to the scheduler. A
grant promises a slot; `take` turns the promise into a Session stream, `withdraw` returns it
unused. So slots are never counted in two places, and a request promised a slot finds it free
when it runs.
"""

from __future__ import annotations

from collections.abc import Callable

from compressive_rt.runtime.session import Session


class SlotAdmission:
    """Grants `session`'s slots; with none free, `reclaim()` may free one (a server spills an
    idle stream) and says whether it did."""

    def __init__(self, session: Session, reclaim: Callable[[], bool] | None = None) -> None:
        self.session, self.reclaim = session, reclaim
        self.promised = 0  # slots granted and not yet taken

    @property
    def free(self) -> int:
        return self.session.max_streams - len(self.session.streams) - self.promised

    def grant(self) -> bool:
        """Promise a slot: True when one is free (or reclaimed), else False (nothing changes)."""
        if self.free <= 0 and not (self.reclaim is not None and self.reclaim()):
            return False
        self.promised += 1
        return True

    def take(self) -> int:
        """A granted slot as a new Session stream; its id."""
        self.promised -= 1
        return self.session.add_stream()

    def withdraw(self) -> None:
        """A granted slot that will not be taken (its request ended first)."""
        self.promised -= 1
