"""A multi-fidelity search in MLflow (:class:`MultiFidelityRun`): one parent run, under which each
rung's search (and the check's) nests its own parent run (``tags.mlflow.parentRunId``), so the UI
shows multi-fidelity search -> rung -> trials.

Each promoted trial's run is linked to its cheap ancestor, the run of the same configuration at the
rung before (:meth:`MultiFidelityRun.link`): the trial run gets :data:`ANCESTOR_RUN_TAG`,
:data:`ANCESTOR_TRIAL_TAG`, :data:`RUNG_TAG` and :data:`FIDELITY_TAG`, the ancestor
:data:`PROMOTED_TO_TAG`. The parent gets the search's settings, the fidelity report's files as
artifacts and its rank correlations and regrets as metrics.

The run is made at the start and found again by its id on ``--resume``; a store that cannot be
reached costs only the MLflow copy (the links are kept in ``multifidelity.json`` and applied again
by ``--resume``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tuneddml.tracking.mlflow_store import client, experiment_id, log_metrics, log_params

MULTIFIDELITY_TAG = "tuneddml.multifidelity"
ANCESTOR_RUN_TAG = "tuneddml.ancestor_run_id"  # on a promoted trial's run: the same config's run a rung before
ANCESTOR_TRIAL_TAG = "tuneddml.ancestor_trial"
RUNG_TAG = "tuneddml.rung"
FIDELITY_TAG = "tuneddml.fidelity"  # the rung's settings as text (``epochs=1,steps_per_epoch=10``, ``full``)
PROMOTED_TO_TAG = "tuneddml.promoted_to"  # on the ancestor: its descendant's run
SEARCH_RUN_TAG = "tuneddml.search_run_id"
PARENT_TAG = "mlflow.parentRunId"


class MultiFidelityRun:
    """The multi-fidelity search's parent run (its id kept in ``multifidelity.json``)."""

    def __init__(self, uri: str, experiment_id: str, parent_run_id: str) -> None:
        self.uri = uri
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id

    @classmethod
    def start(cls, uri: str, experiment: str, name: str, params: Mapping[str, Any]) -> MultiFidelityRun:
        mlflow = client(uri)
        exp_id = experiment_id(mlflow, experiment)
        parent = mlflow.create_run(exp_id, run_name=name, tags={MULTIFIDELITY_TAG: name})
        log_params(mlflow, parent.info.run_id, params)
        return cls(uri, exp_id, parent.info.run_id)

    def to_json(self) -> dict[str, Any]:
        return {"experiment_id": self.experiment_id, "parent_run_id": self.parent_run_id}

    @classmethod
    def from_json(cls, uri: str, data: Mapping[str, Any]) -> MultiFidelityRun:
        return cls(uri, data["experiment_id"], data["parent_run_id"])

    def link_search(self, rung: str, search_run_id: str) -> None:
        """Name a rung's search on the parent (``tuneddml.search_run_id.<rung>``)."""
        client(self.uri).set_tag(self.parent_run_id, f"{SEARCH_RUN_TAG}.{rung}", search_run_id)

    def link(self, links: Sequence[Mapping[str, Any]]) -> None:
        """Tag each promoted trial's run with its ancestor, and each ancestor with its descendant.
        ``links``: dicts with ``run_id``, ``ancestor_run_id``, ``ancestor_trial``, ``rung`` and
        ``fidelity`` (setting a tag twice is harmless: a replay changes nothing)."""
        mlflow = client(self.uri)
        for link in links:
            run_id = link["run_id"]
            mlflow.set_tag(run_id, ANCESTOR_RUN_TAG, link["ancestor_run_id"])
            mlflow.set_tag(run_id, ANCESTOR_TRIAL_TAG, str(link.get("ancestor_trial") or ""))
            mlflow.set_tag(run_id, RUNG_TAG, str(int(link["rung"])))
            mlflow.set_tag(run_id, FIDELITY_TAG, str(link["fidelity"]))
            mlflow.set_tag(link["ancestor_run_id"], PROMOTED_TO_TAG, run_id)

    def finish(self, *, files: Sequence[Path], metrics: Mapping[str, float], status: str = "FINISHED") -> None:
        """``metrics`` and ``files`` on the parent; end it."""
        mlflow = client(self.uri)
        log_metrics(mlflow, self.parent_run_id, metrics, step=0)
        for path in files:
            mlflow.log_artifact(self.parent_run_id, str(path))
        mlflow.set_terminated(self.parent_run_id, status)
