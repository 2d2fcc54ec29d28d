"""Seeded synthetic workloads with their ground truth (numpy only): users and a city's road sensors."""
