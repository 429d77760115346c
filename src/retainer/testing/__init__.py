"""Helpers for tests of rules and integrations that run without a CRM: scenarios and a recording handler."""

from __future__ import annotations

from ..adapters.recording import RecordingHandler
from .scenario import Scenario, ScenarioError, ScenarioFailure, Step, load_scenario, run_scenario_file

__all__ = [
    "RecordingHandler",
    "Scenario",
    "ScenarioError",
    "ScenarioFailure",
    "Step",
    "load_scenario",
    "run_scenario_file",
]
