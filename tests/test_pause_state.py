"""An operator's pause in PartitionState (worker/partitions.py): no fetch, no claim and no
commit while paused; a commit in flight when the pause came still moves `stored`; after the
resume and the new positioning, reading continues from what is stored. Pure: no broker."""

from __future__ import annotations

from dataclasses import dataclass

from aiokafka import TopicPartition

from worker.partitions import Claim, Partitions


@dataclass(frozen=True)
class Record:
    offset: int


def _records(start: int, end: int) -> list[Record]:
    return [Record(o) for o in range(start, end)]


def test_paused_state_fetches_claims_and_commits_nothing_until_resumed() -> None:
    partitions = Partitions()
    (state,) = partitions.assign([TopicPartition("t", 0)])
    state.positioned(10, 10)
    inflight, _ = state.claim(state.stamp(), _records(10, 15), 15)
    assert isinstance(inflight, Claim)
    state.commit_started()
    # Fetched behind it, not yet committing; and one more returned before the pause.
    later, _ = state.claim(state.stamp(), _records(15, 20), 20)
    assert isinstance(later, Claim)
    before_pause = state.stamp()

    assert state.pause() and not state.pause()
    assert partitions.paused() == [state] and partitions.fetchable() == []
    assert state.consuming  # still assigned and positioned: membership is untouched
    assert state.stamp() is None
    assert state.claim(before_pause, _records(20, 25), 25) == (None, False)
    assert not state.may_commit(later)
    # The commit that was in flight did store: `stored` follows the database.
    assert state.commit_finished(inflight)
    assert state.stored == 15

    assert state.resume() and not state.resume()
    assert partitions.fetchable() == [state]
    # The caller positions it again from the database: reading continues at `stored`.
    state.positioned(15, 15)
    assert not state.may_commit(later)  # the pre-pause claim belongs to an old generation
    again, _ = state.claim(state.stamp(), _records(15, 18), 18)
    assert isinstance(again, Claim) and again.start == 15 and state.may_commit(again)


def test_a_pause_survives_positionings() -> None:
    partitions = Partitions()
    (state,) = partitions.assign([TopicPartition("t", 1)])
    state.pause()  # read from partition_pauses before the first positioning
    state.positioned(None, 0)
    assert state.paused and state.stamp() is None
    state.positioned(7, 7)  # a fence or an offsets reset while paused
    assert state.paused and partitions.fetchable() == []
