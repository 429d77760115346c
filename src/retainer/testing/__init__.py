"""Helpers for tests of rules and integrations that run without a CRM."""

from __future__ import annotations

from ..adapters.recording import RecordingHandler

__all__ = ["RecordingHandler"]
