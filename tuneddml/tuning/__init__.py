"""Ray Tune at the edge: the trial function as a Ray trainable, and the search driver."""

from __future__ import annotations
