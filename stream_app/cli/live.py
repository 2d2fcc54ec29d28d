"""Live terminal view of what flows: rates in and out, latency, latest predictions, forecasts, alerts."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rich.console import Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from stream_app.kafka_io import consume
from stream_app.settings import Settings

__all__ = ["LiveView", "watch"]

OUTPUTS = ("next-action-predictions", "traffic-forecasts", "anomaly-alerts", "cell-activity", "dead-letters")


@dataclass
class LiveView:
    """What the view shows, updated from output records; ``render()`` draws it."""

    produced: Callable[[], int] = lambda: 0
    started: float = field(default_factory=time.monotonic)
    counts: Counter[str] = field(default_factory=Counter)
    latencies_ms: deque[float] = field(default_factory=lambda: deque(maxlen=5000))
    predictions: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=8))
    forecasts: dict[str, dict[str, Any]] = field(default_factory=dict)
    alerts: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=6))
    model_version: str = "-"

    def add(self, topic: str, value: dict[str, Any]) -> None:
        self.counts[topic] += 1
        if topic == "next-action-predictions":
            self.latencies_ms.append(value["processed_at"] - value["ingested_at"])
            self.predictions.appendleft(value)
            self.model_version = value["model_version"]
        elif topic == "traffic-forecasts":
            self.forecasts[value["sensor_id"]] = value
        elif topic == "anomaly-alerts":
            self.alerts.appendleft(value)

    def render(self) -> Group:
        return Group(self._summary(), self._prediction_table(), self._forecast_table(), self._alert_table())

    def _summary(self) -> Panel:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        lat = sorted(self.latencies_ms)
        p50 = lat[len(lat) // 2] if lat else 0
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else 0
        text = (f"in: {self.produced():,} events ({self.produced() / elapsed:,.0f}/s)   "
                f"predictions: {self.counts['next-action-predictions']:,} "
                f"({self.counts['next-action-predictions'] / elapsed:,.0f}/s)   "
                f"forecasts: {self.counts['traffic-forecasts']:,}   cells: {self.counts['cell-activity']:,}   "
                f"alerts: {self.counts['anomaly-alerts']:,}   dead letters: {self.counts['dead-letters']:,}\n"
                f"latency ingest→prediction p50 {p50:,.0f} ms  p99 {p99:,.0f} ms   model: {self.model_version}")
        return Panel(text, title="stream-app demo (Ctrl-C to stop)")

    def _prediction_table(self) -> Table:
        table = Table("user", "as of", "next action (top 3)", "window", title="latest next-action predictions",
                      expand=True)
        for p in self.predictions:
            top = "  ".join(f"{s['action']} {s['prob']:.2f}" for s in p["top_k"][:3])
            table.add_row(p["user_id"], time.strftime("%H:%M:%S", time.gmtime(p["as_of"] / 1000)), top,
                          f"{p['window_events']} ev")
        return table

    def _forecast_table(self) -> Table:
        table = Table("sensor", "window end", "observed", "forecasts (* = a baseline serves)", "model",
                      title="latest traffic forecasts", expand=True)
        for f in sorted(self.forecasts.values(), key=lambda f: f["sensor_id"])[:8]:
            horizons = "  ".join(f"{h['minutes']}m {_horizon_value(h):.1f}{_baseline_mark(h)}" for h in f["horizons"])
            observed = "imputed" if f["imputed"] else f"{f['observed']:.1f}"
            table.add_row(f["sensor_id"], time.strftime("%H:%M", time.gmtime(f["window_end"] / 1000)), observed,
                          horizons, f.get("model_version", ""))
        return table

    def _alert_table(self) -> Table:
        table = Table("kind", "key", "observed", "expected", "score", "severity", "sensors",
                      title="anomaly alerts (incidents: raised, then resolved)", expand=True)
        for a in self.alerts:
            kind = f"{a['kind']} {a['status']}" if a.get("status") else a["kind"]
            table.add_row(kind, a["key"], f"{a['observed']:.1f}", f"{a['expected']:.1f}", f"{a['score']:.1f}",
                          a["severity"], ",".join(a.get("sensors") or []))
        return table


def _horizon_value(horizon: dict[str, Any]) -> float:
    """A forecast's value (``speed`` in records written before readings had kinds)."""
    value = horizon.get("value", horizon.get("speed"))
    return float(value) if value is not None else float("nan")


def _baseline_mark(horizon: dict[str, Any]) -> str:
    return "" if horizon.get("source") in (None, "model") else "*"


async def watch(settings: Settings, view: LiveView, duration_s: float | None = None) -> None:
    """Consume the output topics into ``view`` and redraw it until ``duration_s`` (or forever)."""
    names = {settings.topic(t): t for t in OUTPUTS}

    async def reader() -> None:
        async for record in consume(settings, list(names), from_beginning=False):
            try:
                view.add(names[record.topic], json.loads(record.value))
            except (ValueError, KeyError):
                continue

    task = asyncio.create_task(reader())
    deadline = None if duration_s is None else time.monotonic() + duration_s
    try:
        with Live(view.render(), refresh_per_second=2) as live:
            while deadline is None or time.monotonic() < deadline:
                await asyncio.sleep(0.5)
                if task.done():
                    task.result()
                live.update(view.render())
    finally:
        task.cancel()
