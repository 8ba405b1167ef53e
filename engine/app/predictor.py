"""The predictor service: execution-time quantiles for a ``model_type`` and task metadata.

Sources, in order of preference:

1. **learned** — durations Kiln observed itself (table ``observations``), per model type and
   hardware, conditioned on the task's size features (``input_tokens``, ``output_tokens``)
   by :class:`~kiln.core.prediction.OnlineQuantileModel`; used once the model type has at least
   ``KILN_PREDICTOR_MIN_SAMPLES`` (default 5) observations;
2. **lookup** — the ``predictions.json`` file named by ``KILN_PREDICTIONS_FILE`` (seed 000's
   format, milliseconds; re-read when the file changes);
3. **external** — ``POST {KILN_PREDICTOR_URL}/predict`` with a timeout of
   ``KILN_PREDICTOR_TIMEOUT_S`` (default 1 s); when it is down or answers nonsense the
   prediction falls through (and ``health()`` says so).

Predictions are seconds inside Kiln; the wire format (``response``) is milliseconds.
``kiln.predictor`` (:class:`PredictorAPI`) is the face web and workers use; the SQL is in
``kiln.store.predictions``.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa

from kiln.app.database import Database
from kiln.core.errors import InvalidPredictRequest
from kiln.core.prediction import LookupTable, OnlineQuantileModel, Prediction, estimate
from kiln.core.prediction.lookup import METADATA_FIELDS
from kiln.store import predictions as store

__all__ = [
    "InvalidPredictRequest",
    "Predictor",
    "PredictorAPI",
    "annotate_predictions_txn",
    "features_of",
    "predictor_for",
    "record_observation_txn",
    "task_metadata",
]

log = logging.getLogger("kiln.predictor")
T = TypeVar("T")

#: Size features the learned model conditions on, most informative first.
FEATURES = ("output_tokens", "input_tokens")
VERSION = "1.0.0"


def features_of(metadata: Mapping[str, Any] | None) -> dict[str, float]:
    """The numeric size features present in a task's metadata."""
    out: dict[str, float] = {}
    for name in FEATURES:
        value = (metadata or {}).get(name)
        if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
            out[name] = float(value)
    if "output_tokens" not in out:
        value = (metadata or {}).get("max_tokens")
        if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
            out["output_tokens"] = float(value)
    return out


def task_metadata(params: Any) -> dict[str, Any]:
    """A model_type task's metadata: ``params["metadata"]`` when params is an object."""
    if isinstance(params, dict) and isinstance(params.get("metadata"), dict):
        return dict(params["metadata"])
    return {}


def record_observation_txn(
    conn: sa.Connection,
    *,
    model_type: str,
    hardware: str | None,
    metadata: Mapping[str, Any] | None,
    duration_s: float,
    task_id: int | None = None,
    instance_id: int | None = None,
) -> None:
    """Record a duration observed for ``model_type``, with the size features of
    ``metadata``: what the learned model conditions on."""
    store.insert_observation_txn(
        conn,
        model_type=model_type,
        hardware=hardware,
        features=features_of(metadata),
        duration_s=duration_s,
        task_id=task_id,
        instance_id=instance_id,
    )


@dataclass
class Predictor:
    """One process's view of the predictor; :meth:`refresh` pulls new observations."""

    lookup_file: str | None = None
    external_url: str | None = None
    timeout_s: float = 1.0
    min_samples: int = 5
    model: OnlineQuantileModel = field(
        default_factory=lambda: OnlineQuantileModel(features=FEATURES, prior_samples=10)
    )
    last_observation_id: int = 0
    external_ok: bool | None = None
    external_error: str | None = None
    retry_external_after_s: float = 5.0
    _external_down_until: float = 0.0
    _lookup: LookupTable | None = None
    _lookup_mtime: float | None = None
    _lookup_error: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def from_env(cls) -> Predictor:
        env = os.environ
        return cls(
            lookup_file=env.get("KILN_PREDICTIONS_FILE") or None,
            external_url=(env.get("KILN_PREDICTOR_URL") or "").rstrip("/") or None,
            timeout_s=float(env.get("KILN_PREDICTOR_TIMEOUT_S") or 1.0),
            min_samples=int(env.get("KILN_PREDICTOR_MIN_SAMPLES") or 5),
        )

    # --- sources ----------------------------------------------------------------------

    def refresh(self, conn: sa.Connection, batch: int = 5000) -> int:
        """Learn the observations recorded since the last refresh; return how many."""
        learned = 0
        with self._lock:
            while True:
                rows = store.observations_after(conn, self.last_observation_id, batch)
                for r in rows:
                    self.model.observe(r.model_type, r.hardware, r.duration_s, r.features or {})
                    self.last_observation_id = r.id
                learned += len(rows)
                if len(rows) < batch:
                    return learned

    def lookup(self) -> LookupTable | None:
        if not self.lookup_file:
            return None
        try:
            mtime = Path(self.lookup_file).stat().st_mtime
            if self._lookup is None or mtime != self._lookup_mtime:
                self._lookup = LookupTable.from_file(self.lookup_file)
                self._lookup_mtime, self._lookup_error = mtime, None
        except (OSError, ValueError) as exc:
            self._lookup_error = f"{type(exc).__name__}: {exc}"
            log.warning("prediction lookup file %s unusable: %s", self.lookup_file, exc)
            self._lookup = None
        return self._lookup

    def _external(self, model_type: str, metadata: Mapping[str, Any]) -> Prediction | None:
        if not self.external_url or time.monotonic() < self._external_down_until:
            return None
        import requests

        try:
            response = requests.post(
                f"{self.external_url}/predict",
                json={"model_type": model_type, "metadata": dict(metadata)},
                timeout=self.timeout_s,
            )
            body = response.json()
            if response.status_code >= 500:
                raise ValueError(f"HTTP {response.status_code}")
            self.external_ok, self.external_error = True, None
            if not isinstance(body, dict) or body.get("status") != "success":
                return None
            return Prediction(
                quantiles=tuple(body["quantiles"]),
                values=tuple(float(v) / 1000.0 for v in body["quantile_predictions"]),
                method="external",
                confidence=float(body.get("confidence") or 0.5),
            )
        except (requests.RequestException, ValueError, KeyError, TypeError) as exc:
            self.external_ok, self.external_error = False, f"{type(exc).__name__}: {exc}"
            # Do not wait on a dead predictor for every task: skip it for a while.
            self._external_down_until = time.monotonic() + self.retry_external_after_s
            log.warning("external predictor %s unusable: %s", self.external_url, exc)
            return None

    def predict(
        self, model_type: str, metadata: Mapping[str, Any] | None = None
    ) -> Prediction | None:
        """The best prediction available, or ``None`` when no source knows ``model_type``."""
        metadata = dict(metadata or {})
        hardware = metadata.get("hardware")
        with self._lock:
            if self.model.sample_count(model_type) >= self.min_samples:
                learned = self.model.predict(model_type, hardware, features_of(metadata))
                if learned is not None:
                    return learned
        table = self.lookup()
        if table is not None:
            wanted = {k: metadata[k] for k in METADATA_FIELDS if metadata.get(k) is not None}
            found = table.predict(model_type, **wanted)
            if found is not None:
                return found
        return self._external(model_type, metadata)

    # --- the service's answers (seed 000, milliseconds) -----------------------------------

    def response(self, model_type: Any, metadata: Any) -> dict[str, Any]:
        if not isinstance(model_type, str) or not model_type.strip():
            raise InvalidPredictRequest("model_type must be a non-empty string", field="model_type")
        if metadata is not None and not isinstance(metadata, dict):
            raise InvalidPredictRequest("metadata must be an object", field="metadata")
        prediction = self.predict(model_type.strip(), metadata or {})
        if prediction is None:
            return {"status": "error", "message": "No prediction data available"}
        return prediction_json(model_type.strip(), prediction)

    def health(self) -> dict[str, Any]:
        table = self.lookup()
        with self._lock:
            learned = {mt for (mt, hw, path) in self.model._buckets if not path and hw == "*"}
        total = len(learned | set(table.rows if table else ()))
        degraded = bool(self._lookup_error) or self.external_ok is False
        return {
            "status": "degraded" if degraded else "healthy",
            "service": "predictor",
            "version": VERSION,
            "total_models": total,
            "sources": {
                "learned": {"observations": self.last_observation_id, "model_types": len(learned)},
                "lookup": {"file": self.lookup_file, "error": self._lookup_error},
                "external": {
                    "url": self.external_url,
                    "reachable": self.external_ok,
                    "error": self.external_error,
                },
            },
        }


def prediction_json(model_type: str, prediction: Prediction) -> dict[str, Any]:
    est = estimate(prediction)
    return {
        "status": "success",
        "model_type": model_type,
        "quantiles": list(prediction.quantiles),
        "quantile_predictions": [round(v * 1000.0, 3) for v in prediction.values],
        "prediction_method": prediction.method,
        "confidence": round(prediction.confidence, 4),
        "expected_ms": round(est.expected * 1000.0, 3),
        "spread_ms": round(est.spread * 1000.0, 3),
    }


def models(conn: sa.Connection, predictor: Predictor) -> list[dict[str, Any]]:
    """Every model type some source can predict, in the shape of seed 000's ``GET /models``."""
    rows = store.observation_counts(conn)
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        entry = out.setdefault(
            r.model_type,
            {
                "model_type": r.model_type,
                "model_name": r.model_type,
                "total_predictions": 0,
                "hardware_types": [],
                "software_versions": [],
                "sources": ["learned"],
            },
        )
        entry["total_predictions"] += r.n
        if r.hardware and r.hardware not in entry["hardware_types"]:
            entry["hardware_types"].append(r.hardware)
    table = predictor.lookup()
    for summary in table.models() if table else []:
        learned = out.get(summary["model_type"])
        if learned is None:
            out[summary["model_type"]] = {**summary, "sources": ["lookup"]}
            continue
        learned["sources"].append("lookup")
        learned["total_predictions"] += summary["total_predictions"]
        for key in ("hardware_types", "software_versions"):
            learned[key] = sorted(set(learned[key]) | set(summary[key]))
    return [out[k] for k in sorted(out)]


_predictors: dict[str, tuple[float, Predictor]] = {}
_predictors_lock = threading.Lock()


def predictor_for(kiln: Database, *, max_age_s: float = 1.0) -> Predictor:
    """This process's predictor for ``kiln``'s database, refreshed at most every
    ``max_age_s`` seconds from new observations."""
    key = str(kiln.engine.url)
    with _predictors_lock:
        at, predictor = _predictors.get(key, (-math.inf, None))  # type: ignore[assignment]
        if predictor is None:
            predictor = Predictor.from_env()
        stale = time.monotonic() - at > max_age_s
        if stale:
            _predictors[key] = (time.monotonic(), predictor)
    if stale:
        kiln.read(predictor.refresh)
    return predictor


def annotate_predictions_txn(conn: sa.Connection, predictor: Predictor, *, limit: int = 500) -> int:
    """Give waiting ``model_type`` tasks the prediction they will be scheduled with
    (``predicted``, ``predicted_s``); tasks no source can predict keep NULL."""
    done = 0
    memo: dict[tuple[str, str], Prediction | None] = {}
    for r in store.unpredicted_tasks(conn, limit):
        metadata = task_metadata(r.params)
        key = (r.model_type, repr(sorted(metadata.items())))
        if key not in memo:
            memo[key] = predictor.predict(r.model_type, metadata)
        prediction = memo[key]
        if prediction is None:
            continue
        done += store.set_prediction_txn(
            conn, r.id, prediction.to_dict(), estimate(prediction).expected
        )
    return done


class PredictorAPI:
    """``kiln.predictor``: duration predictions for this database, from this process's
    :class:`Predictor` (refreshed from new observations at most once a second)."""

    def __init__(self, kiln: Database) -> None:
        self._kiln = kiln

    def current(self, *, max_age_s: float = 1.0) -> Predictor:
        """This process's predictor, refreshed if older than ``max_age_s``."""
        return predictor_for(self._kiln, max_age_s=max_age_s)

    def predict(
        self, model_type: str, metadata: Mapping[str, Any] | None = None
    ) -> Prediction | None:
        """The best prediction available, or ``None`` when no source knows ``model_type``."""
        return self.current().predict(model_type, metadata)

    def response(self, model_type: Any, metadata: Any) -> dict[str, Any]:
        """Seed 000's answer (milliseconds); :class:`InvalidPredictRequest` for bad input,
        ``{"status": "error", ...}`` when no source knows the model type."""
        return self.current().response(model_type, metadata)

    def health(self) -> dict[str, Any]:
        return self.current().health()

    def models(self) -> list[dict[str, Any]]:
        """Every model type some source can predict (seed 000's ``GET /models``)."""
        predictor = self.current()
        return self._kiln.read(lambda c: models(c, predictor))

    def observe(
        self,
        *,
        model_type: str,
        hardware: str | None,
        metadata: Mapping[str, Any] | None,
        duration_s: float,
        task_id: int | None = None,
        instance_id: int | None = None,
    ) -> None:
        """Record an observed duration; predictors learn it on their next refresh."""
        self._kiln.txn(
            lambda c: record_observation_txn(
                c,
                model_type=model_type,
                hardware=hardware,
                metadata=metadata,
                duration_s=duration_s,
                task_id=task_id,
                instance_id=instance_id,
            )
        )

    def annotate_waiting(self, *, limit: int = 500) -> int:
        """Store predictions on waiting ``model_type`` tasks that have none (a controller
        hook); return how many got one."""
        predictor = self.current()
        return self._kiln.txn(lambda c: annotate_predictions_txn(c, predictor, limit=limit))
