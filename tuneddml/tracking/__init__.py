"""MLflow at the edge: a parent run per search and a child run per trial (:class:`SearchRun`).

The only package that imports mlflow.
"""

from __future__ import annotations

from tuneddml.tracking.mlflow_store import check_tracking_uri, default_tracking_uri
from tuneddml.tracking.search_run import STATUS_TAG, TRIAL_TAG, SearchRun

__all__ = ["STATUS_TAG", "TRIAL_TAG", "SearchRun", "check_tracking_uri", "default_tracking_uri"]
