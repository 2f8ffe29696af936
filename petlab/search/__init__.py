"""Optuna sweeps: search spaces, storages, workers, and study reports."""
