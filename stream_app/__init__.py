"""Real-time behavior stream processor: Faust workers that predict, forecast and alert."""

__version__ = "0.1.0"
