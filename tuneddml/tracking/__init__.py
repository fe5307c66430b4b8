"""MLflow at the edge: one parent run per search, one child run per trial."""

from __future__ import annotations

from tuneddml.tracking.mlflow_store import (
    MlflowTrialLogger,
    check_tracking_uri,
    default_tracking_uri,
    start_search_run,
)

__all__ = ["MlflowTrialLogger", "check_tracking_uri", "default_tracking_uri", "start_search_run"]
