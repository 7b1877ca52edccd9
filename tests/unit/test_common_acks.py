"""Which finished deliveries a consumer acks, and how (civicline.common.acks): one ack with
`multiple` for a run of finished deliveries, never one that settles a delivery still at work."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from civicline.common.acks import AckLedger, Acks


def ledger_with(*tags: int) -> AckLedger:
    ledger = AckLedger()
    for tag in tags:
        ledger.delivered(tag)
    return ledger


def test_a_run_finished_in_order_is_one_multiple_ack() -> None:
    ledger = ledger_with(1, 2, 3, 4)
    for tag in (1, 2, 3):
        ledger.finished(tag)
    assert ledger.take() == Acks(covered=(1, 2, 3))
    assert ledger.take() == Acks()
    ledger.finished(4)
    assert ledger.take() == Acks(covered=(4,))


def test_finished_behind_an_unfinished_delivery_wait_one_round_then_go_alone() -> None:
    ledger = ledger_with(1, 2, 3)
    ledger.finished(2)
    ledger.finished(3)
    assert ledger.take() == Acks()  # 1 is still at work: no multiple ack may reach 2 or 3
    assert ledger.waiting == 2
    assert ledger.take() == Acks(singles=(2, 3))
    ledger.finished(1)
    assert ledger.take() == Acks(covered=(1,))


def test_a_nacked_delivery_does_not_hold_back_those_after_it() -> None:
    ledger = ledger_with(1, 2, 3)
    ledger.dropped(1)
    ledger.finished(2)
    ledger.finished(3)
    assert ledger.take() == Acks(covered=(2, 3))  # the multiple ack names 3; 1 was nacked


def test_on_shutdown_everything_finished_goes_and_the_abandoned_stays_unacked() -> None:
    ledger = ledger_with(1, 2, 3, 4)
    ledger.finished(1)
    ledger.finished(3)
    assert ledger.take(everything=True) == Acks(covered=(1,), singles=(3,))
    assert ledger.take(everything=True) == Acks()
    assert not ledger.take(everything=True)


def test_finishing_a_delivery_of_another_channel_changes_nothing() -> None:
    ledger = ledger_with(1)
    ledger.finished(7)
    ledger.finished(1)
    assert ledger.take() == Acks(covered=(1,))


# One step of a consumer's life: a delivery arrives, finishes, is nacked, or acks are taken.
STEPS = st.lists(
    st.one_of(
        st.just(("deliver", 0)),
        st.tuples(st.just("finish"), st.integers(0, 30)),
        st.tuples(st.just("nack"), st.integers(0, 30)),
        st.tuples(st.just("take"), st.booleans()),
    ),
    max_size=120,
)


@settings(max_examples=300)
@given(STEPS)
def test_no_ack_settles_a_delivery_twice_or_one_still_at_work(
    steps: list[tuple[str, object]],
) -> None:
    ledger = AckLedger()
    delivered = 0
    at_work: set[int] = set()
    finished: set[int] = set()
    settled: set[int] = set()  # acked or nacked, as the broker sees it

    def apply(acks: Acks) -> None:
        if acks.up_to is not None:
            # `multiple`: every unsettled delivery up to the tag
            covered = {t for t in range(1, acks.up_to + 1) if t not in settled}
            assert covered, "an ack that settles nothing"
            assert not covered & at_work, "a multiple ack settled work still in progress"
            assert acks.up_to in finished
            # what the consumer forgets is exactly what the broker settles
            assert set(acks.covered) == covered
            settled.update(covered)
            finished.difference_update(covered)
        for tag in acks.singles:
            assert tag in finished
            assert tag not in settled
            settled.add(tag)
            finished.discard(tag)

    for action, value in steps:
        if action == "deliver":
            delivered += 1
            ledger.delivered(delivered)
            at_work.add(delivered)
        elif action in ("finish", "nack") and isinstance(value, int):
            if value in at_work:
                at_work.discard(value)
                if action == "finish":
                    finished.add(value)
                    ledger.finished(value)
                else:
                    settled.add(value)
                    ledger.dropped(value)
        elif action == "take" and isinstance(value, bool):
            apply(ledger.take(everything=value))
    # Whatever is finished is acked within two rounds, however the rest stands.
    apply(ledger.take())
    apply(ledger.take())
    assert not finished
    assert ledger.waiting == 0
