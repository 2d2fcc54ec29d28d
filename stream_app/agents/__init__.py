"""Faust agents: each reads one topic, validates, and hands valid events to its pipeline."""
