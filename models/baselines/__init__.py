"""Baselines every model is measured against: next-action (actions) and traffic (traffic)."""
