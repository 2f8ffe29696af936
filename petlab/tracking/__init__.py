"""Experiment tracking: Comet.ml (online, or an offline archive in the run directory) or nothing."""

from petlab.tracking.base import Tracker
from petlab.tracking.comet import CometTracker, create_tracker
from petlab.tracking.provenance import git_state, installed_packages

__all__ = ["CometTracker", "Tracker", "create_tracker", "git_state", "installed_packages"]
