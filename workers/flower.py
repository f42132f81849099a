"""`dustpan flower`: Flower, the Celery monitor, behind HTTP basic auth.

Flower sees tasks through the workers' task events. Workers leave them off until asked
(``celery.task_events`` in the settings): Flower broadcasts ``enable_events`` every 5 s, so a
running worker starts sending them within seconds of Flower's start.

Only basic auth is offered, no ``--auth``/OAuth: Flower's ``--auth`` is a pattern matched
against the e-mail an OAuth provider returns, and a pattern that is not anchored and escaped
(``.*@example.com`` under Flower versions that apply it as a plain regex) also admits
``evil@example.com.attacker.org``. We run no OAuth provider to need it, so ``FLOWER_AUTH``
in the environment is refused rather than silently applied.
"""

from __future__ import annotations

import os
import sys
from typing import Any


def run_flower(address: str, port: int, credentials: tuple[str, str] | None) -> None:
    if os.environ.get("FLOWER_AUTH"):
        print(
            "dustpan: FLOWER_AUTH (Flower OAuth) is not supported; use DUSTPAN_FLOWER_USER and DUSTPAN_FLOWER_PASSWORD",
            file=sys.stderr,
        )
        raise SystemExit(2)
    if credentials is not None:
        # Through the environment Flower reads (FLOWER_BASIC_AUTH), not argv, which `ps` shows to everyone.
        os.environ["FLOWER_BASIC_AUTH"] = ":".join(credentials)
    _require_auth_on_metrics()
    from workers import logging_setup
    from workers.celery_app import app
    from workers.settings import get_settings

    settings = get_settings()
    logging_setup.configure(settings.log_format, settings.log_level)  # tornado keeps handlers it finds
    app.start(["flower", f"--address={address}", f"--port={port}"])


def _require_auth_on_metrics() -> None:
    """Flower serves /metrics without authentication even when basic auth is on (mher/flower#1342):
    task names and worker names are for the operators, so it asks for the same credentials."""
    from flower.views.monitor import Metrics
    from tornado.web import authenticated

    get: Any = Metrics.get
    if not getattr(get, "dustpan_authenticated", False):
        protected: Any = authenticated(get)
        protected.dustpan_authenticated = True
        Metrics.get = protected
