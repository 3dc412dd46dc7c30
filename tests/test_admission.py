"""The one admission controller over a session's slots (runtime/admission.py): whatever the
order of grants, takes, withdrawals and removals, the slots held plus those promised never pass
the session's capacity, a grant is refused only when no slot is free and none can be
reclaimed, and a granted slot is there to take."""

from hypothesis import given
from hypothesis import strategies as st

from compressive_rt.runtime.admission import SlotAdmission


class Slots:
    """A session's slot bookkeeping alone (what SlotAdmission reads and calls)."""

    def __init__(self, max_streams: int) -> None:
        self.max_streams, self.streams, self._next = max_streams, [], 0

    def add_stream(self) -> int:
        assert len(self.streams) < self.max_streams, "a slot taken beyond the capacity"
        self._next += 1
        self.streams.append(self._next)
        return self._next

    def remove_stream(self, stream: int) -> None:
        self.streams.remove(stream)


@given(st.integers(1, 4), st.lists(st.sampled_from(["grant", "take", "withdraw", "remove"]),
                                   max_size=40), st.booleans())
def test_promised_and_held_slots_never_pass_the_capacity(capacity, operations, reclaims):
    session = Slots(capacity)
    idle: list[int] = []  # streams a reclaim may spill

    def reclaim() -> bool:
        if not idle:
            return False
        session.remove_stream(idle.pop(0))
        return True

    admission = SlotAdmission(session, reclaim if reclaims else None)
    for operation in operations:
        free_before = admission.free
        if operation == "grant":
            can_reclaim = reclaims and bool(idle)
            assert admission.grant() == (free_before > 0 or can_reclaim)
        elif operation == "take" and admission.promised:
            idle.append(admission.take())
        elif operation == "withdraw" and admission.promised:
            admission.withdraw()
        elif operation == "remove" and idle:
            session.remove_stream(idle.pop())
        assert len(session.streams) + admission.promised <= capacity
        assert admission.free == capacity - len(session.streams) - admission.promised
