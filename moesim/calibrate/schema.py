"""Moved to ``moesim.formats.profile`` (torch-free, shared by calibrator, cost models and executor); this
name is kept so existing imports keep working."""

from moesim.formats.profile import *  # noqa: F403
