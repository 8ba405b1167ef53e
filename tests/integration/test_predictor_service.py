"""Kiln as seed 000's predictor service: lookup file, learned quantiles, external predictor."""

from __future__ import annotations

import json
import random
import threading
from pathlib import Path

import pytest
import requests
from flask import Flask, jsonify, request
from werkzeug.serving import make_server

from kiln.app.predictor import predictor_for, record_observation_txn
from kiln.core.prediction import Observation, calibration
from tests.integration.test_instances_routing import serve_kiln
from tests.taskinstance_helpers import free_port

pytestmark = [pytest.mark.postgres]

QS = [0.1, 0.25, 0.5, 0.75, 0.9]


def row(model_type: str, hardware: str, values: list[float], status: str = "success") -> dict:
    return {
        "status": status,
        "model_type": model_type,
        "model_info": {
            "type": "llm",
            "name": model_type.upper(),
            "hardware": hardware,
            "software_name": "vllm",
            "software_version": "0.2.0",
        },
        "quantiles": QS,
        "quantile_predictions": values,
    }


@pytest.fixture
def lookup_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "predictions.json"
    path.write_text(
        json.dumps(
            [
                row("gpt", "A100", [1, 2, 3, 4, 5], status="error"),
                row("gpt", "A100", [850, 1050, 1300, 1650, 2100]),
                row("gpt", "V100", [1700, 2100, 2600, 3300, 4200]),
                row("broken-only", "A100", [1, 2, 3, 4, 5], status="failed"),
            ]
        )
    )
    monkeypatch.setenv("KILN_PREDICTIONS_FILE", str(path))
    return path


@pytest.fixture
def kiln(pg_url: str):  # type: ignore[no-untyped-def]
    from kiln.app.runtime import Kiln
    from kiln.core.config import Settings

    k = Kiln(Settings(database_url=pg_url), pool_size=4)
    yield k
    k.close()


def predict(api: str, model_type: str, **metadata: object) -> requests.Response:
    return requests.post(
        f"{api}/predict", json={"model_type": model_type, "metadata": metadata}, timeout=5
    )


def test_lookup_file_skips_unsuccessful_rows_and_filters_by_metadata(kiln, lookup_file):
    with serve_kiln(kiln) as api:
        first = predict(api, "gpt").json()
        assert first["status"] == "success"
        assert first["prediction_method"] == "lookup"
        assert first["quantiles"] == QS
        # The error row comes first in the file but is skipped.
        assert first["quantile_predictions"] == [850, 1050, 1300, 1650, 2100]
        v100 = predict(api, "gpt", hardware="V100", software_version="0.2.0").json()
        assert v100["quantile_predictions"] == [1700, 2100, 2600, 3300, 4200]
        assert predict(api, "gpt", hardware="H100").status_code == 404
        none = predict(api, "broken-only")
        assert none.status_code == 404
        assert none.json()["status"] == "error"
        assert none.json()["message"] == "No prediction data available"
        models = requests.get(f"{api}/predictor/models", timeout=5).json()["models"]
        assert [m["model_type"] for m in models] == ["gpt"]
        assert models[0]["hardware_types"] == ["A100", "V100"]
        bad = requests.post(f"{api}/predict", json={"metadata": {}}, timeout=5)
        assert bad.status_code == 400
        assert set(bad.json()) == {"error", "message", "details"}


def synthetic(n: int, seed: int) -> list[Observation]:
    """Durations that grow with output tokens, with lognormal noise (as LLM serving does)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        tokens = rng.choice([16, 64, 256, 1024])
        hardware = rng.choice(["A100", "V100"])
        speed = 0.03 if hardware == "A100" else 0.06
        duration = (0.05 + speed * tokens) * rng.lognormvariate(0.0, 0.25)
        out.append(
            Observation("llm", hardware, duration, {"output_tokens": tokens, "input_tokens": 100})
        )
    return out


def test_learned_quantiles_are_calibrated_on_held_out_durations(kiln, lookup_file, capsys):
    train, held_out = synthetic(3000, seed=1), synthetic(1000, seed=2)

    def store(conn):  # type: ignore[no-untyped-def]
        for obs in train:
            record_observation_txn(
                conn,
                model_type=obs.model_type,
                hardware=obs.hardware,
                metadata=dict(obs.features),
                duration_s=obs.duration,
            )

    kiln.txn(store)
    predictor = predictor_for(kiln, max_age_s=0.0)
    report = calibration(predictor.model, held_out)
    with capsys.disabled():
        print(
            f"\nlearned predictor on {report['n']} held-out durations: "
            f"{report['under_p50']:.3f} under p50, {report['under_p90']:.3f} under p90"
        )
    assert report["skipped"] == 0
    assert 0.44 <= report["under_p50"] <= 0.56
    assert 0.85 <= report["under_p90"] <= 0.95
    with serve_kiln(kiln) as api:
        short = predict(api, "llm", hardware="A100", output_tokens=16).json()
        long = predict(api, "llm", hardware="A100", output_tokens=1024).json()
        slow = predict(api, "llm", hardware="V100", output_tokens=1024).json()
        assert short["prediction_method"] == long["prediction_method"] == "learned"
        # Conditioned on size and hardware, not one global median.
        assert short["quantile_predictions"][2] * 10 < long["quantile_predictions"][2]
        assert long["quantile_predictions"][2] * 1.5 < slow["quantile_predictions"][2]
        assert long["quantile_predictions"][2] == pytest.approx(0.05e3 + 0.03e3 * 1024, rel=0.15)
        models = requests.get(f"{api}/predictor/models", timeout=5).json()["models"]
        assert {m["model_type"]: m["sources"] for m in models}["llm"] == ["learned"]


class ExternalPredictor:
    """A stand-in for a separate predictor service speaking seed 000's protocol."""

    def __init__(self, port: int) -> None:
        app = Flask("external-predictor")
        self.calls = 0

        @app.post("/predict")
        def predict_route():  # type: ignore[no-untyped-def]
            self.calls += 1
            model_type = request.get_json()["model_type"]
            if model_type != "ext":
                return jsonify({"status": "error", "message": "No prediction data available"})
            return jsonify(
                {
                    "status": "success",
                    "model_type": "ext",
                    "quantiles": QS,
                    "quantile_predictions": [100, 200, 300, 400, 500],
                    "prediction_method": "lookup",
                    "confidence": 0.7,
                }
            )

        self.server = make_server("127.0.0.1", port, app, threaded=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.thread.join(timeout=5)
        self.server.server_close()


def test_external_predictor_is_used_and_its_outage_falls_back_without_stalling(
    kiln, lookup_file, monkeypatch
):
    port = free_port()
    monkeypatch.setenv("KILN_PREDICTOR_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("KILN_PREDICTOR_TIMEOUT_S", "0.5")
    external = ExternalPredictor(port)
    with serve_kiln(kiln) as api:
        try:
            ext = predict(api, "ext").json()
            assert ext["prediction_method"] == "external"
            assert ext["quantile_predictions"] == [100, 200, 300, 400, 500]
            assert requests.get(f"{api}/predictor/health", timeout=5).json()["status"] == "healthy"
        finally:
            external.stop()
        # Down: the lookup file still answers what it knows, the rest is a clean 404.
        assert predict(api, "gpt").json()["prediction_method"] == "lookup"
        down = predict(api, "ext")
        assert down.status_code == 404
        health = requests.get(f"{api}/predictor/health", timeout=5).json()
        assert health["status"] == "degraded"
        assert health["sources"]["external"]["reachable"] is False
        # Once seen down it is not asked again for every prediction: back on its port within
        # Kiln's retry interval (5 s), it receives no call and the answer is still the 404.
        back = ExternalPredictor(port)
        try:
            again = predict(api, "ext")
            assert again.status_code == 404
            assert back.calls == 0
        finally:
            back.stop()
