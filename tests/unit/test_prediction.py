"""Execution-time prediction: lookup file, online quantile model, calibration."""

import json
import math
import random
import time

import pytest

from kiln.core.prediction import (
    GroupHistory,
    InvalidLookupFile,
    LookupTable,
    Observation,
    OnlineQuantileModel,
    Prediction,
    calibration,
    estimate,
    quantile_value,
)

QS = [0.1, 0.25, 0.5, 0.75, 0.9]


def row(status="success", model_type="llama", hardware="A100", version="0.2.0", values=None):
    return {
        "status": status,
        "model_type": model_type,
        "model_info": {
            "type": "llm",
            "name": model_type.title(),
            "hardware": hardware,
            "software_name": "vllm",
            "software_version": version,
        },
        "quantiles": QS,
        "quantile_predictions": values or [850.0, 1050.0, 1300.0, 1650.0, 2100.0],
    }


@pytest.fixture
def lookup_file(tmp_path):
    path = tmp_path / "predictions.json"
    path.write_text(
        json.dumps(
            [
                row(status="error", hardware="A100", values=[1, 2, 3, 4, 5]),
                row(hardware="V100", values=[2000, 2500, 3000, 3500, 4000]),
                row(hardware="A100"),
                row(hardware="A100", version="0.3.0", values=[500, 600, 700, 800, 900]),
                row(model_type="mistral", hardware="A100", values=[100, 200, 300, 400, 500]),
            ]
        )
    )
    return path


def test_lookup_file_skips_rows_whose_status_is_not_success(lookup_file):
    table = LookupTable.from_file(lookup_file)
    prediction = table.predict("llama", hardware="A100")
    assert prediction.values == pytest.approx((0.85, 1.05, 1.3, 1.65, 2.1))  # ms -> s
    assert prediction.method == "lookup"
    assert sum(len(rows) for rows in table.rows.values()) == 4


def test_lookup_matches_model_type_then_filters_by_the_metadata_given(lookup_file):
    table = LookupTable.from_file(lookup_file)
    assert table.predict("llama").values[2] == pytest.approx(3.0)  # first success row
    assert table.predict("llama", hardware="A100", software_version="0.3.0").values[
        2
    ] == pytest.approx(0.7)
    assert table.predict("mistral", hardware=None).values[2] == pytest.approx(0.3)
    assert table.predict("llama", hardware="H100") is None
    assert table.predict("gpt-9") is None
    with pytest.raises(ValueError, match="input_tokens"):
        table.predict("llama", input_tokens=10)


def test_lookup_lists_models_like_the_predictor_service(lookup_file):
    models = LookupTable.from_file(lookup_file, units="ms").models()
    assert [m["model_type"] for m in models] == ["llama", "mistral"]
    assert models[0]["hardware_types"] == ["A100", "V100"]
    assert models[0]["software_versions"] == ["0.2.0", "0.3.0"]


def test_a_lookup_file_that_is_not_an_array_of_rows_is_rejected(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"status": "success"}')
    with pytest.raises(InvalidLookupFile):
        LookupTable.from_file(path)
    path.write_text("not json")
    with pytest.raises(InvalidLookupFile):
        LookupTable.from_file(path)


def synthetic(n, seed):
    """Durations log-normal around 0.5 s + 2 ms per input token, on two hardwares."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        tokens = math.exp(rng.uniform(math.log(10), math.log(8000)))
        hardware = rng.choice(["A100", "H100"])
        base = (0.5 + 0.002 * tokens) * (1.0 if hardware == "A100" else 0.6)
        duration = base * math.exp(rng.gauss(0.0, 0.35))
        out.append(Observation("llama", hardware, duration, {"input_tokens": tokens}))
    return out


def test_learned_quantiles_are_calibrated_on_held_out_data():
    model = OnlineQuantileModel.from_observations(synthetic(6000, seed=1))
    result = calibration(model, synthetic(2000, seed=2))
    assert result["n"] == 2000 and result["skipped"] == 0
    assert 0.4 <= result["under_p50"] <= 0.6
    assert 0.8 <= result["under_p90"] <= 0.97


def test_learned_predictions_follow_the_size_feature_and_the_hardware():
    model = OnlineQuantileModel.from_observations(synthetic(6000, seed=3))
    small = model.predict("llama", "A100", {"input_tokens": 50})
    large = model.predict("llama", "A100", {"input_tokens": 5000})
    faster = model.predict("llama", "H100", {"input_tokens": 5000})
    assert small.method == "learned" and 0 < small.confidence <= 1
    assert quantile_value(large, 0.5) > 5 * quantile_value(small, 0.5)
    assert quantile_value(faster, 0.5) < quantile_value(large, 0.5)


def test_sparse_buckets_fall_back_to_coarser_estimates():
    model = OnlineQuantileModel(prior_samples=20)
    for _ in range(200):
        model.observe("llama", "A100", 1.0, {"input_tokens": 100})
    model.observe("llama", "A100", 50.0, {"input_tokens": 100_000})
    one_sample = model.predict("llama", "A100", {"input_tokens": 100_000})
    # One sample in the bucket barely moves the estimate away from its parent's.
    assert quantile_value(one_sample, 0.5) < 5.0
    assert one_sample.confidence == pytest.approx(1 / 21)
    unseen = model.predict("llama", "A100", {"input_tokens": 7})
    assert quantile_value(unseen, 0.5) == pytest.approx(1.0)
    assert model.predict("llama", "TPU", {"input_tokens": 100}) is not None  # any hardware
    assert model.predict("gpt-9") is None


def test_the_window_follows_drift():
    model = OnlineQuantileModel(window=100)
    for _ in range(500):
        model.observe("m", None, 1.0)
    for _ in range(100):
        model.observe("m", None, 3.0)
    assert quantile_value(model.predict("m"), 0.5) == pytest.approx(3.0)


def test_the_model_round_trips_through_plain_json_data():
    model = OnlineQuantileModel(features=("input_tokens", "batch"))
    model.observe_all(synthetic(500, seed=4))
    model.observe("llama", "A100", 2.0, {"input_tokens": 10, "batch": 4})
    restored = OnlineQuantileModel.from_dict(json.loads(json.dumps(model.to_dict())))
    for features in ({"input_tokens": 10, "batch": 4}, {"input_tokens": 3000}, None):
        assert restored.predict("llama", "A100", features) == model.predict(
            "llama", "A100", features
        )


def test_online_updates_are_cheap_enough_for_thousands_per_second():
    model = OnlineQuantileModel()
    observations = synthetic(5000, seed=5)
    started = time.perf_counter()
    model.observe_all(observations)
    assert 5000 / (time.perf_counter() - started) > 2000


def test_negative_durations_are_refused():
    with pytest.raises(ValueError):
        OnlineQuantileModel().observe("m", None, -1.0)


def test_prediction_repairs_crossed_quantiles_and_validates_its_shape():
    assert Prediction((0.1, 0.5, 0.9), (3.0, 1.0, 2.0)).values == (1.0, 2.0, 3.0)
    with pytest.raises(ValueError):
        Prediction((0.5, 0.1), (1.0, 2.0))
    with pytest.raises(ValueError):
        Prediction((0.5,), (1.0, 2.0))
    with pytest.raises(ValueError):
        Prediction((0.5,), (1.0,), method="guess")
    p = Prediction((0.5,), (1.0,), method="external", confidence=3)
    assert p.confidence == 1.0 and Prediction.from_dict(p.to_dict()) == p


def test_group_history_is_a_smoothed_mean_of_finished_durations_per_group():
    history = GroupHistory(alpha=0.5, max_groups=2)
    assert history.feature("a") is None and history.feature(None) is None
    history.observe("a", 4.0)
    history.observe("a", 8.0)
    assert history.feature("a") == 6.0
    history.observe("b", 1.0)
    history.observe("c", 1.0)  # evicts the least recently updated group, "a"
    assert history.feature("a") is None
    assert GroupHistory.from_dict(history.to_dict()).feature("c") == 1.0


def test_a_category_feature_is_its_own_bucket_and_survives_a_round_trip():
    model = OnlineQuantileModel(features=("adapter", "input_tokens"), prior_samples=2)
    rng = random.Random(4)
    for _ in range(200):
        model.observe("sdxl", None, rng.uniform(0.9, 1.1), {"adapter": "anime", "input_tokens": 77})
        model.observe("sdxl", None, rng.uniform(9, 11), {"adapter": "photo", "input_tokens": 77})
    anime = model.predict("sdxl", None, {"adapter": "anime", "input_tokens": 77})
    photo = model.predict("sdxl", None, {"adapter": "photo", "input_tokens": 77})
    assert anime is not None and photo is not None
    assert quantile_value(anime, 0.9) < 2 < 8 < quantile_value(photo, 0.1)
    again = OnlineQuantileModel.from_dict(model.to_dict())
    assert again.predict("sdxl", None, {"adapter": "photo", "input_tokens": 77}) == photo


def test_the_p90_covers_about_nine_jobs_in_ten_from_the_first_ones_on_and_after_a_drift():
    rng = random.Random(8)
    model = OnlineQuantileModel(features=("input_tokens",), prior_samples=5)
    hits: list[bool] = []
    for i in range(3000):
        tokens = rng.choice([10, 100, 1000])
        # Durations triple two thirds of the way through (a slower model version).
        duration = (0.01 * tokens) * rng.lognormvariate(0, 0.6) * (3 if i >= 2000 else 1)
        prediction = model.predict("m", None, {"input_tokens": tokens})
        if prediction is not None:
            hits.append(duration <= quantile_value(prediction, 0.9))
        model.observe("m", None, duration, {"input_tokens": tokens})
    first, after = hits[:300], hits[2300:2600]
    assert 0.85 <= sum(first) / len(first) <= 0.97
    assert 0.85 <= sum(hits) / len(hits) <= 0.95
    assert 0.85 <= sum(after) / len(after) <= 0.95  # caught up within 300 jobs of the drift


@pytest.mark.parametrize("unit", [0.001, 1.0, 1000.0])
def test_a_numeric_feature_tells_sizes_apart_alike_in_any_unit(unit):
    # Job sizes given as a feature in seconds, milliseconds or kiloseconds: the buckets are
    # on the log of the value itself, so small values are not lumped into one bucket.
    model = OnlineQuantileModel(features=["hint"], buckets_per_octave=4, prior_samples=0)
    sizes = [unit * 2**k for k in range(-6, 7)]
    for _ in range(20):
        for size in sizes:
            model.observe("m", None, size, {"hint": size})
    small = estimate(model.predict("m", None, {"hint": sizes[1]})).expected
    large = estimate(model.predict("m", None, {"hint": sizes[-2]})).expected
    assert small == pytest.approx(sizes[1], rel=0.05)
    assert large == pytest.approx(sizes[-2], rel=0.05)


def test_zero_and_negative_feature_values_share_a_bucket_below_every_positive_one():
    model = OnlineQuantileModel(features=["hint"])
    assert model.bucket_of(0) == model.bucket_of(-3.0)
    assert model.bucket_of(0) < model.bucket_of(1e-300) < model.bucket_of(1.0)
