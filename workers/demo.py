"""`dustpan demo`: the stack plus a simulated upstream feed through the real signed webhook."""

from __future__ import annotations

import json
import random
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import httpx
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from workers import up_lifecycle
from workers.cli_errors import UsageError
from workers.settings import Settings
from workers.stack import Stack
from workers.webhook import sign

SYMBOLS = ["AAPL", "MSFT", "NVDA", "TSLA", "AMZN", "GOOG", "META", "SPY", "QQQ", "AMD"]
PRICES = {
    "AAPL": "231.40",
    "MSFT": "415.10",
    "NVDA": "121.75",
    "TSLA": "248.50",
    "AMZN": "186.20",
    "GOOG": "163.35",
    "META": "512.90",
    "SPY": "561.05",
    "QQQ": "480.60",
    "AMD": "152.15",
}
BATCH = 50
REDELIVERY_SHARE = Decimal("0.2")


def simulated_trades(count: int, symbols: list[str], rng: random.Random) -> list[dict[str, str]]:
    """Fractional fills as an onchain venue produces them: up to 18 decimals, both sides."""
    start = datetime.now(UTC) - timedelta(minutes=10)
    trades = []
    for n in range(count):
        symbol = rng.choice(symbols)
        units = rng.randrange(1, 2 * 10**18)  # 18-decimal units, below 2 shares
        trades.append(
            {
                "id": f"demo-{start:%Y%m%d%H%M%S}-{n:06d}",
                "symbol": symbol,
                "side": "buy" if rng.random() < 0.55 else "sell",  # float-ok: a coin toss, not money
                "quantity": format(Decimal(units).scaleb(-18), "f"),  # plain notation: no "5E-18"
                "price": PRICES[symbol],
                "executed_at": (start + timedelta(milliseconds=n)).isoformat(),
            }
        )
    return trades


def post_batch(client: httpx.Client, secret: str, trades: list[dict[str, str]]) -> dict[str, object]:
    body = json.dumps({"trades": trades}).encode()
    timestamp = str(int(time.time()))
    response = client.post(
        "/webhooks/trades",
        content=body,
        headers={
            "X-Dustpan-Timestamp": timestamp,
            "X-Dustpan-Signature": sign(secret, timestamp, body),
            "Content-Type": "application/json",
        },
    )
    response.raise_for_status()
    return dict(response.json())


class RunningUp:
    """The stack of a `dustpan up` already running in this directory: the demo feeds it instead
    of starting a second one (which its lock on the data directory would refuse)."""

    def __init__(self, settings: Settings, api_url: str) -> None:
        self.api_url = api_url
        self.env = {
            "DUSTPAN_WEBHOOK_SECRET": ",".join(settings.webhook_secret),
            "DUSTPAN_API_TOKEN": settings.api_token or "",
        }

    def __enter__(self) -> RunningUp:
        return self

    def __exit__(self, *_: object) -> None:
        return None  # it belongs to the `up` in the other terminal

    def keep_alive(self) -> None:
        return None

    def wait_until_healthy(self) -> None:
        try:
            httpx.get(f"{self.api_url}/health/live", timeout=5).raise_for_status()
        except httpx.HTTPError as exc:
            raise UsageError(
                f"a dustpan up runs in this directory but its API at {self.api_url} does not answer ({exc});"
                " stop that up, or run the demo in another directory"
            ) from None


def _stack(settings: Settings, port: int) -> Stack | RunningUp:
    data_dir = settings.data_dir.resolve()
    try:
        up_lifecycle.take_ownership(data_dir).close()
    except up_lifecycle.AlreadyRunning:
        api_url = str(up_lifecycle.read_record(data_dir).get("api_url") or "")
        if not api_url:
            raise
        print(f"using the dustpan up already running here (API {api_url})", flush=True)
        return RunningUp(settings.with_embedded_services(), api_url)
    except FileNotFoundError:  # no data directory yet: nothing runs here
        pass
    return Stack(settings, port=port)


def run_demo(settings: Settings, trades: int, symbols: int, port: int, seed: int | None) -> int:
    rng = random.Random(seed)
    feed = simulated_trades(trades, SYMBOLS[: max(1, min(symbols, len(SYMBOLS)))], rng)
    redeliveries = [t for t in feed if Decimal(rng.randrange(100)) < REDELIVERY_SHARE * 100]
    with _stack(settings, port) as stack:
        stack.wait_until_healthy()
        secret = stack.env["DUSTPAN_WEBHOOK_SECRET"].split(",")[0]
        batches = [feed[i : i + BATCH] for i in range(0, len(feed), BATCH)]
        batches += [redeliveries[i : i + BATCH] for i in range(0, len(redeliveries), BATCH)]
        accepted = duplicates = 0
        with httpx.Client(base_url=stack.api_url, timeout=30) as client, _progress() as progress:
            task = progress.add_task("posting signed webhooks", total=len(feed) + len(redeliveries))
            for batch in batches:
                answer = post_batch(client, secret, batch)
                accepted += int(answer["accepted"])  # type: ignore[call-overload]
                duplicates += int(answer["duplicates"])  # type: ignore[call-overload]
                progress.advance(task, len(batch))
        print(f"webhooks answered: {accepted} accepted, {duplicates} re-deliveries recognised as duplicates")
        ok = _wait_for_drain(stack)
        from workers.report import print_report

        print_report()
    return 0 if ok else 1


def _wait_for_drain(stack: Stack | RunningUp, timeout: float = 120.0) -> bool:  # float-ok: seconds
    """Until no trade waits and no execution is in flight, and the audit balances."""
    headers = {"Authorization": f"Bearer {stack.env['DUSTPAN_API_TOKEN']}"}
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=stack.api_url, headers=headers, timeout=30) as client, _progress() as progress:
        task = progress.add_task("waiting for the workers to drain", total=None)
        while time.monotonic() < deadline:
            stack.keep_alive()
            audit = client.get("/audit").json()
            pending = client.get("/executions", params={"status": "pending", "limit": 1}).json()["items"]
            submitted = client.get("/executions", params={"status": "submitted", "limit": 1}).json()["items"]
            # The API's audit counts the trades still waiting in the stack's own database.
            waiting = sum(int(symbol["waiting"]) for symbol in audit["symbols"])
            if audit["ok"] and not waiting and not pending and not submitted:
                progress.update(task, description="drained")
                return True
            time.sleep(0.5)
    print("the queue did not drain in time")
    return False


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
