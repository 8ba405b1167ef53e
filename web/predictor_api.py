"""The predictor service of seed 000, served by Kiln (see ``engine.predictor``).

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

from flask import Blueprint, current_app, jsonify, request

from engine.predictor import models, predictor_for
from web.errors import BadRequest

blp = Blueprint("predictor", __name__)


def _kiln() -> Any:
    return current_app.extensions["kiln"]


@blp.post("/predict")
def predict():  # type: ignore[no-untyped-def]
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        raise BadRequest("the request body must be a JSON object")
    answer = predictor_for(_kiln()).response(data.get("model_type"), data.get("metadata"))
    if answer["status"] != "success":
        answer = {
            **answer,
            "error": "no_prediction_data",
            "details": {"model_type": data.get("model_type")},
        }
        return jsonify(answer), 404
    return jsonify(answer)


@blp.get("/predictor/health")
def health():  # type: ignore[no-untyped-def]
    return jsonify(predictor_for(_kiln()).health())


@blp.get("/predictor/models")
def list_models():  # type: ignore[no-untyped-def]
    kiln = _kiln()
    predictor = predictor_for(kiln)
    return jsonify({"status": "success", "models": kiln.read(lambda c: models(c, predictor))})


blueprints = [blp]
