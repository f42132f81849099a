"""Beat on real processes: one leader across the fleet, a killed leader replaced, every job run."""

from __future__ import annotations

import time

from tests.integration.conftest import Books
from tests.support.fleet import DustpanProcess, Fleet, wait_for

SWEEP_RUNS = "SELECT count(*) FROM job_runs WHERE job = 'sweep.rewake'"


def sending(beat: DustpanProcess) -> int:
    return beat.log_path.read_text(errors="replace").count("Sending due task sweep-rewake")


def test_two_beats_send_each_tick_once_and_a_killed_leader_is_replaced(make_fleet, books: Books) -> None:  # type: ignore[no-untyped-def]
    fleet: Fleet = make_fleet(DUSTPAN_SCHEDULE__LEADER_LOCK_SECONDS="4", DUSTPAN_SCHEDULE__AUDIT_SECONDS="3600")
    fleet.start_worker()
    first = fleet.start_beat()
    wait_for(lambda: sending(first) > 0, 30, "the first Beat to lead")
    second = fleet.start_beat()
    started, runs_before = time.monotonic(), books.value(SWEEP_RUNS)
    time.sleep(8)
    elapsed, runs = time.monotonic() - started, books.value(SWEEP_RUNS) - runs_before  # type: ignore[operator]
    assert sending(second) == 0, "the second Beat sent while the first held the lock"
    assert elapsed - 3 <= runs <= elapsed + 2, f"{runs} sweep runs in {elapsed:.0f} s: not once per 1 s tick"

    first.kill()
    wait_for(lambda: sending(second) > 0, 30, "the second Beat to take over")
    taken_over = books.value(SWEEP_RUNS)
    wait_for(lambda: books.value(SWEEP_RUNS) > taken_over, 10, "runs to go on under the new leader")  # type: ignore[operator]


def test_a_real_beat_and_worker_run_every_scheduled_job(make_fleet, books: Books) -> None:  # type: ignore[no-untyped-def]
    from celeryconfig import beat_schedule

    every_second = {
        f"DUSTPAN_SCHEDULE__{name.upper()}": "1"
        for name in (
            "sweep_seconds",
            "audit_seconds",
            "audit_verify_seconds",
            "venues_seconds",
            "positions_seconds",
            "dust_scan_seconds",
            "cleanup_seconds",
            "normalize_seconds",
            "balances_seconds",
            "prices_seconds",
        )
    }
    fleet: Fleet = make_fleet(**every_second)
    fleet.start_worker()
    fleet.start_beat()
    jobs = {entry["task"] for entry in beat_schedule.values()}
    assert len(jobs) >= 9

    def ran() -> set[str]:
        return {str(job) for (job,) in books.rows("SELECT DISTINCT job FROM job_runs WHERE outcome = 'ok'")}

    wait_for(lambda: jobs <= ran(), 90, f"every scheduled job to run once: {sorted(jobs)}")
    assert books.value("SELECT count(*) FROM job_runs WHERE outcome = 'failed'") == 0
