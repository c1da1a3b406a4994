"""The splits an experiment trains on, and how its images are prepared: one call into the data.

The data layer holds the logic (:mod:`mamlpp.data.acquire`: find, download if allowed and
announced, load; the ``[data]`` section's image preparation): a run makes one call per load,
with its ``[data]`` section (:class:`mamlpp.data.section.DataSection`).
"""

from __future__ import annotations

from mamlpp.data.acquire import load_splits, loader_options, preprocessing_for

__all__ = ["load_splits", "loader_options", "preprocessing_for"]
