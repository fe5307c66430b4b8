"""Whether Ray can resume a search from its experiment folder, checked before Ray starts.

Ray Tune keeps a search's state in ``<storage>/<name>/``: ``tuner.pkl`` (the Tuner, cloudpickle),
``experiment_state-<time>.json`` (the trials; JSON that may embed cloudpickle payloads),
``search_gen_state-<time>.json`` (the search generator, cloudpickle despite its name) and
``searcher-state-<time>.pkl`` (the searcher's own ``save``: JSON for the project's ask/tell cores,
:mod:`tuneddml.searchers.ray_searcher`; a pickle for Ray's ``OptunaSearch``). When one of them
cannot be read, ``Tuner.restore`` does not fail: Tune logs the error and starts the experiment
afresh (finished trials re-run) or waits for nothing. :func:`check_resumable` reads each file the
way Ray will, without unpickling anything (a pickle is only walked opcode by opcode, which runs no
code), and raises a one-line ConfigError naming the file that is missing, truncated or foreign.

:func:`refuse_silent_restart` is the driver's second line of defence: inside it, the record Tune
logs when its restore fails becomes an exception out of ``Tuner.fit``.

No Ray import here: the check runs in :func:`~tuneddml.tuning.request.prepare_search`.
"""

from __future__ import annotations

import json
import logging
import pickletools
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tuneddml.errors import ConfigError

#: the ``format`` field of an ask/tell searcher's state file (the same as
#: ``tuneddml.searchers.ray_searcher.STATE_FORMAT``, which imports Ray; a test holds them equal)
SEARCHER_STATE_FORMAT = "tuneddml.searcher-state/1"
FIELD = "--resume"


def check_resumable(folder: Path, searcher: str) -> None:
    """ConfigError unless Ray's experiment folder ``folder`` of a search run by ``searcher`` (a
    registered searcher name) holds every state file ``Tuner.restore`` reads, complete and of the
    right kind."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(FIELD, str(folder), "a search with Ray's state (its experiment folder is missing)")
    states = sorted(folder.glob("experiment_state-*.json"))  # Ray takes the newest by name
    if not states:
        raise ConfigError(
            FIELD, _name(folder / "experiment_state-*.json"), "Ray's experiment state of the search (missing)"
        )
    _check_experiment_state(states[-1])
    _check_pickle(folder / "tuner.pkl")
    generators = sorted(folder.glob("search_gen_state-*.json"))
    searcher_states = sorted(folder.glob("searcher-state-*.pkl"))
    if generators:
        _check_pickle(generators[-1])
        if not searcher_states:
            raise ConfigError(FIELD, _name(folder / "searcher-state-*.pkl"), "the searcher's state (missing)")
    if searcher_states:
        core_type = _core_type(searcher)
        if core_type is None:
            _check_pickle(searcher_states[-1])
        else:
            _check_searcher_json(searcher_states[-1], core_type)


@contextmanager
def refuse_silent_restart(what: str = "Ray's state") -> Iterator[None]:
    """Within the block, Tune's "Failed to restore the run state." (after which it would start the
    experiment afresh, or wait forever: its concurrency limiter, restored before the searcher
    failed, still counts the trials that ran at the interruption) raises a ConfigError out of
    ``Tuner.fit`` instead: the searcher's own, or one naming ``what`` and the cause."""
    logger = logging.getLogger("ray.tune.execution.tune_controller")

    def refuse(record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR and "Failed to restore the run state" in record.getMessage():
            cause = record.exc_info[1] if record.exc_info else None
            if isinstance(cause, ConfigError):  # the searcher's own one-line refusal
                raise cause
            reason = str(cause).strip().splitlines()[0][:100] if cause and str(cause).strip() else "see above"
            raise ConfigError(FIELD, what, f"a state Ray can restore ({type(cause).__name__}: {reason})")
        return True

    logger.addFilter(refuse)
    try:
        yield
    finally:
        logger.removeFilter(refuse)


def _name(path: Path) -> str:
    """``<search>/<file>``: the file, short enough for a one-line message."""
    return f"{path.parent.name}/{path.name}"


def _check_experiment_state(path: Path) -> None:
    try:
        state = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as exc:
        raise ConfigError(
            FIELD, _name(path), f"a readable experiment state ({exc.strerror or exc})"
        ) from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ConfigError(FIELD, _name(path), "a complete experiment state (truncated or not JSON)") from None
    if not isinstance(state, dict) or not {"trial_data", "runner_data"} <= set(state):
        raise ConfigError(FIELD, _name(path), "Ray's experiment state (foreign content)")


def _check_pickle(path: Path) -> None:
    """A complete pickle stream, walked opcode by opcode (nothing is loaded, nothing runs)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(FIELD, _name(path), "a file Ray keeps for the search (missing)") from None
    except OSError as exc:
        raise ConfigError(FIELD, _name(path), f"a readable file ({exc.strerror or exc})") from None
    try:
        if not data.startswith(b"\x80"):
            raise ValueError("no pickle header")
        for opcode, _arg, _pos in pickletools.genops(data):
            if opcode.name == "STOP":
                break
        else:
            raise ValueError("no STOP")
    except Exception:  # genops: ValueError on truncation, others on garbage
        raise ConfigError(FIELD, _name(path), "a complete Ray state file (truncated or foreign)") from None


def _check_searcher_json(path: Path, core_type: str) -> None:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(FIELD, _name(path), f"a readable searcher state ({exc.strerror or exc})") from None
    if data.startswith(b"\x80"):
        raise ConfigError(FIELD, _name(path), "a JSON searcher state (it is a pickle, never loaded)")
    try:
        state = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ConfigError(FIELD, _name(path), "a complete searcher state (truncated or not JSON)") from None
    if not isinstance(state, dict) or state.get("format") != SEARCHER_STATE_FORMAT:
        raise ConfigError(FIELD, _name(path), "a searcher state of this project (foreign content)")
    if state.get("core_type") != core_type or not isinstance(state.get("core"), dict):
        raise ConfigError(FIELD, _name(path), f"a state of {core_type} (it is {state.get('core_type')}'s)")


def _core_type(searcher: str) -> str | None:
    """The class name of searcher ``searcher``'s ask/tell core; None for a Ray search algorithm
    (e.g. Optuna's, which pickles its state)."""
    from tuneddml.searchers import SEARCHERS

    factory = SEARCHERS.get(searcher, "--searcher").factory
    if isinstance(factory, type) and callable(getattr(factory, "state_dict", None)):
        return factory.__name__
    return None
