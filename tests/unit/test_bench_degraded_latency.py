"""bench/degraded_latency.py keeps its command line and its choice of sick symbols (the bench
itself runs a fleet for minutes; this only keeps the script from rotting between runs)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.degraded_latency import RUNS, main, parse_args, sick_symbols


def test_help_names_every_fault_knob(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--help"])

    assert exited.value.code == 0
    out = capsys.readouterr().out
    for option in ("--rate", "--seconds", "--symbols", "--hang-percent", "--error-percent", "--kill-every"):
        assert option in out


def test_defaults_run_every_run_in_order() -> None:
    args = parse_args([])

    assert args.runs == list(RUNS) == ["healthy", "faults", "kills", "both"]
    assert (args.rate, args.symbols, args.hang_percent, args.error_percent) == (200, 24, 15, 5)


@pytest.mark.parametrize(
    "argv", [["--runs", "healthy,chaos"], ["--hang-percent", "100"], ["--kill-every", "0"], ["--slowest", "-1"]]
)
def test_bad_options_are_usage_errors(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_args(argv)

    assert exited.value.code == 2


def test_sick_symbols_are_the_hang_percent_of_the_feed_symbols() -> None:
    assert sick_symbols(24, 15) == ["LAT20", "LAT21", "LAT22", "LAT23"]  # 3.6 rounds to 4
    assert sick_symbols(10, 1) == ["LAT09"]  # a fault asked for is never rounded away
    assert sick_symbols(24, 0) == []


def test_the_slowest_orders_and_the_logs_are_kept_only_when_asked(tmp_path: Path) -> None:
    assert (parse_args([]).slowest, parse_args([]).keep_logs) == (0, None)
    args = parse_args(["--slowest", "5", "--keep-logs", str(tmp_path / "logs")])
    assert (args.slowest, args.keep_logs) == (5, tmp_path / "logs")
