"""The store thread (serving/store_worker.py): a take that waits for another server's holder
waits on a thread of its own, so the operations submitted after it (this server's releases,
acknowledgements, other streams) run meanwhile; the take runs once its wait is over, after
every operation submitted before that (a load after a spill sees the spill)."""

import threading

import pytest

from compressive_rt.serving.store_worker import StoreWorker

pytestmark = pytest.mark.serving

WAIT_S = 60  # bounds a broken test only: every wait below ends on an event


class Journal:
    """A stand-in store that records the operations run on it, in order."""

    def __init__(self) -> None:
        self.ran: list[str] = []

    def close(self) -> None:
        self.ran.append("closed")


def test_a_waiting_take_holds_up_no_later_operation_and_follows_earlier_ones():
    store = Journal()
    worker = StoreWorker(store, waiters=2)
    holder_gave_up, answers = threading.Event(), {}
    done = {name: threading.Event() for name in ("spill", "take", "release", "other")}

    def answer(name):
        def record(result, error):
            answers[name] = (result, error)
            done[name].set()
        return record

    def run(name):
        def operation(journal):
            journal.ran.append(name)
            return name
        return operation

    worker.submit(run("spill"), answer("spill"))
    worker.submit_after(lambda: holder_gave_up.wait(WAIT_S), run("take"), answer("take"))
    worker.submit(run("release"), answer("release"))  # this server's own, behind the take
    worker.submit(run("other"), answer("other"))  # another stream's acknowledgement
    assert done["other"].wait(WAIT_S)
    assert store.ran == ["spill", "release", "other"]  # the take still waits: nothing held up
    assert not done["take"].is_set()
    holder_gave_up.set()
    assert done["take"].wait(WAIT_S)
    worker.close()
    assert store.ran == ["spill", "release", "other", "take", "closed"]
    assert answers["take"] == ("take", None)


def test_a_failed_wait_is_the_operations_answer_and_it_does_not_run():
    store = Journal()
    worker = StoreWorker(store, waiters=1)
    answered = threading.Event()
    answers = []

    def unreachable():
        raise OSError("the store cannot be reached")

    def record(result, error):
        answers.append((result, str(error)))
        answered.set()

    worker.submit_after(unreachable, lambda journal: journal.ran.append("take"), record)
    assert answered.wait(WAIT_S)
    worker.close()
    assert answers == [(None, "the store cannot be reached")]
    assert store.ran == ["closed"]
