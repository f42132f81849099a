"""`up` restarts a child that died, but a child that keeps dying right after its start is a
crash loop: `up` then stops and shows the end of its log instead of counting restarts."""

from __future__ import annotations

from workers.up_lifecycle import CrashLoop


def test_five_quick_deaths_in_a_row_are_a_crash_loop() -> None:
    loop = CrashLoop(limit=5)
    assert [loop.note_death("api", 0.5) for _ in range(5)] == [False, False, False, False, True]


def test_a_child_that_ran_a_while_starts_counting_again() -> None:
    loop = CrashLoop(limit=3)
    loop.note_death("worker", 1)
    loop.note_death("worker", 1)
    assert loop.note_death("worker", 600) is False  # it ran: a crash now and then, not a loop
    assert loop.note_death("worker", 1) is False


def test_children_are_counted_apart() -> None:
    loop = CrashLoop(limit=2)
    assert loop.note_death("api", 1) is False
    assert loop.note_death("beat", 1) is False
    assert loop.note_death("api", 1) is True
