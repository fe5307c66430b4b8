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
from tuneddml.tracking.search_run import TRIAL_TAG

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

    def link(self, links: Sequence[dict[str, Any]]) -> int:
        """Tag each promoted trial's run with its ancestor, and each ancestor with its descendant;
        the number of links left undone (a run not found). ``links``: dicts with ``run_id``,
        ``ancestor_run_id``, ``trial``, ``ancestor_trial``, ``rung``, ``fidelity`` and the two
        searches' parent runs ``search_run_id``, ``ancestor_search_run_id``; a run id that is None
        (the results table was written while MLflow was down) is looked up by its trial's id under
        its search's parent run, and written into the link. Setting a tag twice changes nothing."""
        mlflow = client(self.uri)
        undone = 0
        for link in links:
            for own, trial, search in (
                ("run_id", "trial", "search_run_id"),
                ("ancestor_run_id", "ancestor_trial", "ancestor_search_run_id"),
            ):
                if not link.get(own) and link.get(trial) and link.get(search):
                    link[own] = _trial_run(mlflow, self.experiment_id, link[search], str(link[trial]))
            run_id, ancestor = link.get("run_id"), link.get("ancestor_run_id")
            if not run_id or not ancestor:
                undone += 1
                continue
            mlflow.set_tag(run_id, ANCESTOR_RUN_TAG, ancestor)
            mlflow.set_tag(run_id, ANCESTOR_TRIAL_TAG, str(link.get("ancestor_trial") or ""))
            mlflow.set_tag(run_id, RUNG_TAG, str(int(link["rung"])))
            mlflow.set_tag(run_id, FIDELITY_TAG, str(link["fidelity"]))
            mlflow.set_tag(ancestor, PROMOTED_TO_TAG, run_id)
        return undone

    def finish(self, *, files: Sequence[Path], metrics: Mapping[str, float], status: str = "FINISHED") -> None:
        """``metrics`` and ``files`` on the parent; end it."""
        mlflow = client(self.uri)
        log_metrics(mlflow, self.parent_run_id, metrics, step=0)
        for path in files:
            mlflow.log_artifact(self.parent_run_id, str(path))
        mlflow.set_terminated(self.parent_run_id, status)


def _trial_run(mlflow: Any, experiment: str, search_run_id: str, trial_id: str) -> str | None:
    """The run of trial ``trial_id`` under a search's parent run (None: not in MLflow yet)."""
    found = mlflow.search_runs(
        [experiment],
        filter_string=f"tags.{PARENT_TAG} = '{search_run_id}' and tags.`{TRIAL_TAG}` = '{trial_id}'",
        max_results=1,
    )
    return found[0].info.run_id if found else None
