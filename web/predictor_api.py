"""The predictor service of seed 000, served by Kiln (see ``kiln.app.predictor``).

* ``POST /predict`` ``{model_type, metadata}`` → 200 ``{status: "success", model_type,
  quantiles, quantile_predictions (ms), prediction_method (learned | lookup | external),
  confidence, expected_ms, spread_ms}``; 404 ``{status: "error", error: "no_prediction_data",
  message: "No prediction data available", details}`` when no source knows the model type;
  400 for an invalid body.
* ``GET /predictor/health`` → ``{status: healthy | degraded, service, version, total_models,
  sources}``.
* ``GET /predictor/models`` → ``{status: "success", models: [{model_type, model_name,
  total_predictions, hardware_types, software_versions, sources}]}``.
"""

from __future__ import annotations

from typing import Any

from flask import jsonify
from flask_smorest import Blueprint

from kiln.web.auth import SECURITY
from kiln.web.common import kiln
from kiln.web.schemas_scheduling import (
    ModelListSchema,
    NoPredictionSchema,
    PredictionSchema,
    PredictorHealthSchema,
    PredictRequestSchema,
)

blp = Blueprint("predictor", __name__, description="Duration predictions (seed 000).")

# The views answer with the engine's dicts as they are (the schemas document them).


@blp.post("/predict")
@blp.arguments(PredictRequestSchema())
@blp.response(200, PredictionSchema)
@blp.alt_response(404, schema=NoPredictionSchema, description="no source knows the model type")
@blp.doc(security=SECURITY)
def predict(data: dict[str, Any]):  # type: ignore[no-untyped-def]
    """Quantiles of a task's duration for a model type and metadata; 400 for an invalid
    body, 404 when no source (learned, lookup file, external service) knows the type."""
    answer = kiln().predictor.response(data.get("model_type"), data.get("metadata"))
    if answer["status"] != "success":
        answer = {
            **answer,
            "error": "no_prediction_data",
            "details": {"model_type": data.get("model_type")},
        }
        return jsonify(answer), 404
    return jsonify(answer)


@blp.get("/predictor/health")
@blp.response(200, PredictorHealthSchema)
def health():  # type: ignore[no-untyped-def]
    """The predictor's sources and whether each works."""
    return jsonify(kiln().predictor.health())


@blp.get("/predictor/models")
@blp.response(200, ModelListSchema)
def list_models():  # type: ignore[no-untyped-def]
    """Every model type some source can predict."""
    return jsonify({"status": "success", "models": kiln().predictor.models()})
