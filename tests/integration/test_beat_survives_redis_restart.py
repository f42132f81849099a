"""`dustpan beat` rides out Redis restarts (workers/beat_scheduler.py).

RedBeat's own scheduler renews its leader lock at every tick; a Redis outage (or the LOADING
answers while Redis replays its AOF) made the renewal raise, ``close()`` raise again, and the
process exit 1. Here a real Beat runs against a Redis of its own (the session's shared one is
never killed), which is SIGKILLed, then stopped with SIGTERM, its port answering LOADING for a
few seconds (as Redis does while it replays its AOF) before it starts again from its AOF:
Beat stays up, says once that it stopped scheduling,
once that it leads again, and sends the schedule again. A SIGTERM during an outage still stops
it at once, with status 0.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.integration.conftest import fleet_env
from tests.support.fleet import DustpanProcess, Fleet, wait_for
from workers.embedded import EmbeddedRedis

pytestmark = pytest.mark.integration

AWAY = "stopped scheduling"
BACK = "leads again"
SENDING = "Sending due task"
LOADING_SECONDS = 4  # how long the port answers LOADING, as Redis does while it replays its AOF


class LoadingRedis:
    """Answers every command on a port with Redis's LOADING error, as a Redis replaying its AOF
    does; a real replay may be over before Beat's next attempt, this one is not."""

    def __init__(self, port: int) -> None:
        self._server = socket.create_server(("127.0.0.1", port), reuse_port=False)
        self._server.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._server.close()

    def _serve(self) -> None:
        clients: list[socket.socket] = []
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                client, _ = self._server.accept()
                client.settimeout(0.05)
                clients.append(client)
            for client in clients:
                with contextlib.suppress(OSError):
                    if client.recv(65_536):
                        client.sendall(b"-LOADING Redis is loading the dataset in memory\r\n")
        for client in clients:
            client.close()


def _log(beat: DustpanProcess) -> str:
    return beat.log_path.read_text(errors="replace")


def _alive(beat: DustpanProcess) -> bool:
    assert beat.process is not None
    return beat.process.poll() is None


def _sent_since_back(beat: DustpanProcess) -> int:
    text = _log(beat)
    return text[text.rfind(BACK) :].count(SENDING) if BACK in text else 0


def _ride_out(beat: DustpanProcess, outage: int, restart: object) -> None:
    """Run ``restart`` while Beat ticks; Beat must warn, come back, and send the schedule again."""
    away, back = _log(beat).count(AWAY), _log(beat).count(BACK)
    restart()  # type: ignore[operator]
    wait_for(lambda: _log(beat).count(BACK) > back or not _alive(beat), 90, f"Beat to lead again after outage {outage}")
    assert _alive(beat), f"Beat exited during outage {outage}:\n{beat.log_tail()}"
    assert _log(beat).count(AWAY) == away + 1, f"one warning for outage {outage}:\n{beat.log_tail()}"
    wait_for(lambda: _sent_since_back(beat) > 0 or not _alive(beat), 30, f"Beat to schedule after outage {outage}")
    assert _alive(beat), beat.log_tail()


def _last_back(beat: DustpanProcess) -> str:
    return [line for line in _log(beat).splitlines() if BACK in line][-1]


def test_beat_outlives_redis_sigkill_and_aof_loading_and_still_stops_on_sigterm(
    clean_database: str, own_redis: EmbeddedRedis, tmp_path: Path, log_dir: Path
) -> None:
    env = fleet_env(
        clean_database,
        own_redis.url,
        tmp_path / "data",
        DUSTPAN_SCHEDULE__LEADER_LOCK_SECONDS="6",  # ticks every 2 s: every outage below overlaps one
        DUSTPAN_LOG_FORMAT="text",
    )
    fleet = Fleet(env, log_dir)
    try:
        beat = fleet.start_beat()
        wait_for(lambda: SENDING in _log(beat) or not _alive(beat), 60, "Beat to lead and send")

        def sigkill() -> None:
            own_redis.kill()
            time.sleep(4)  # two ticks with Redis gone
            own_redis.start()

        _ride_out(beat, 1, sigkill)

        def sigterm_and_replay_the_aof() -> None:
            own_redis.stop()  # SIGTERM: Redis writes its AOF and exits
            assert own_redis.port is not None
            loading = LoadingRedis(own_redis.port)
            time.sleep(LOADING_SECONDS)
            loading.close()
            own_redis.start()  # on the same port, from its AOF

        _ride_out(beat, 2, sigterm_and_replay_the_aof)
        assert "BusyLoadingError" in _last_back(beat), f"Beat never met LOADING:\n{beat.log_tail()}"

        # A signal during an outage still ends Beat, promptly and with status 0.
        own_redis.kill()
        wait_for(lambda: _log(beat).count(AWAY) == 3 or not _alive(beat), 30, "Beat to notice the third outage")
        assert beat.process is not None
        beat.process.send_signal(signal.SIGTERM)
        try:
            code = beat.process.wait(30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"Beat ignored SIGTERM during an outage:\n{beat.log_tail()}")
        assert code == 0, beat.log_tail()
        assert "Traceback" not in _log(beat), beat.log_tail(80)
    finally:
        fleet.stop()
