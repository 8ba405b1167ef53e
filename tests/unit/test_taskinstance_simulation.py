"""The instance's pure core: tokenizer, duration model, simulated text, rate-limit buckets."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kiln.taskinstance.ratelimit import (
    RateLimiter,
    TokenBucket,
    format_duration,
    parse_duration,
)
from kiln.taskinstance.server.runtime import InstanceRuntime
from kiln.taskinstance.server.simulation import (
    DEFAULT_OUTPUT_TOKENS,
    DurationModel,
    InvalidMetadata,
    count_chat_tokens,
    count_tokens,
    natural_length,
    simulate_text,
    tokenize,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# ------------------------------------------------------------------ tokenizer


def test_words_and_punctuation_marks_are_separate_tokens():
    assert tokenize("Hello, world!") == ["Hello", ",", "world", "!"]
    assert tokenize("it's 3.5 GPUs") == ["it", "'", "s", "3", ".", "5", "GPUs"]
    assert count_tokens("it's 3.5 GPUs") == 7


def test_whitespace_is_never_a_token_and_unicode_words_are_one_token():
    assert count_tokens("   \n\t ") == 0
    assert tokenize("Töpferofen glüht") == ["Töpferofen", "glüht"]


def test_chat_messages_cost_their_content_plus_four_and_the_reply_three():
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}]
    assert count_chat_tokens(messages) == (3 + 4) + (2 + 4) + 3
    parts = [{"role": "user", "content": [{"type": "text", "text": "a b"}]}]
    assert count_chat_tokens(parts) == 2 + 4 + 3


@given(st.text(max_size=40), st.integers(min_value=0, max_value=300))
def test_simulated_text_has_exactly_the_requested_number_of_tokens(seed, n):
    text = simulate_text(seed, n)
    assert count_tokens(text) == n
    assert simulate_text(seed, n) == text


def test_natural_length_is_deterministic_and_capped_by_max_tokens():
    assert natural_length("prompt", 1000) == natural_length("prompt", 1000)
    assert 8 <= natural_length("prompt", 1000) <= 96
    assert natural_length("prompt", 3) == 3


# ------------------------------------------------------------------ duration model


def test_duration_is_linear_in_input_and_output_tokens_with_the_documented_defaults():
    model = DurationModel()
    assert model.model_ms(0, 0) == pytest.approx(1.8)
    assert model.model_ms(1000, 0) == pytest.approx(1.8 + 99.4)
    assert model.model_ms(100, 50) == pytest.approx(1.8 + 9.94 + 1505.0)


def test_speed_scales_wall_time_including_explicit_durations():
    plan = DurationModel(speed=0.01).plan({}, {"input_tokens": 100, "output_tokens": 50})
    assert plan.model_ms == pytest.approx(1516.74)
    assert plan.wall_ms == pytest.approx(15.1674)
    explicit = DurationModel(speed=0.5).plan({}, {"duration_ms": 200, "output_tokens": 9})
    assert (explicit.model_ms, explicit.wall_ms, explicit.output_tokens) == (200, 100, 9)


def test_token_counts_fall_back_to_max_tokens_the_default_and_the_prompt():
    model = DurationModel()
    assert model.plan({}, {"max_tokens": 7}).output_tokens == 7
    assert model.plan({}, {}).output_tokens == DEFAULT_OUTPUT_TOKENS
    assert model.plan({"prompt": "one, two"}, {}).input_tokens == 3
    assert model.plan("a b c d", {}).input_tokens == 4


@pytest.mark.parametrize(
    "metadata",
    [{"input_tokens": -1}, {"output_tokens": "many"}, {"duration_ms": True}, {"max_tokens": []}],
)
def test_invalid_metadata_is_refused(metadata):
    with pytest.raises(InvalidMetadata):
        DurationModel().plan({}, metadata)


def test_jitter_is_deterministic_per_task_and_absent_from_predictions():
    model = DurationModel(jitter=0.2)
    a = model.plan({}, {"duration_ms": 1000}, "task-a")
    assert a.wall_ms == model.plan({}, {"duration_ms": 1000}, "task-a").wall_ms
    assert a.wall_ms != model.plan({}, {"duration_ms": 1000}, "task-b").wall_ms
    assert model.plan({}, {"duration_ms": 1000}, "task-a", noisy=False).wall_ms == 1000


def test_fail_metadata_marks_the_plan_as_failing_with_an_optional_message():
    assert DurationModel().plan({}, {"fail": True}).fail
    plan = DurationModel().plan({}, {"fail": "disk full"})
    assert plan.fail and plan.fail_message == "disk full"


def test_prediction_list_schedules_the_queue_fifo_over_the_slots():
    runtime = InstanceRuntime("m", max_concurrency=2, duration_model=DurationModel())
    for i in range(3):  # never started, so all three stay queued
        runtime.submit({"i": i}, {"duration_ms": 1000})
    prediction = runtime.predict({"duration_ms": 500})
    # Slots: [0, 0] → tasks end at 1000, 1000, 2000 → the new task starts at 1000.
    assert prediction["wait_ms"] == 1000 and prediction["expected_ms"] == 1500
    assert prediction["queue_size"] == 3 and prediction["error_ms"] > 0


# ------------------------------------------------------------------ rate limits


def test_a_bucket_starts_full_and_refills_per_minute():
    clock = FakeClock()
    bucket = TokenBucket(60, clock)
    bucket.take(60)
    assert bucket.level == 0 and bucket.wait_time(1) == pytest.approx(1.0)
    clock.now += 30
    assert bucket.level == pytest.approx(30)
    assert bucket.wait_time(61) == float("inf")
    clock.now += 1000
    assert bucket.level == 60


def test_the_limiter_refuses_without_charging_and_reports_headers():
    clock = FakeClock()
    limiter = RateLimiter(rpm_limit=2, tpm_limit=100, clock=clock)
    assert limiter.admit(40).allowed
    second = limiter.admit(40)
    assert second.allowed and second.headers["x-ratelimit-remaining-requests"] == "0"
    assert second.headers["x-ratelimit-remaining-tokens"] == "20"
    refused = limiter.admit(1)
    assert not refused.allowed and refused.limited_by == "requests"
    assert refused.retry_after == pytest.approx(30.0)
    assert refused.headers["x-ratelimit-reset-requests"] == "1m0s"
    clock.now += 30
    too_big = limiter.admit(80)  # 20 left + 50 refilled < 80
    assert not too_big.allowed and too_big.limited_by == "tokens"
    assert limiter.headers()["x-ratelimit-remaining-requests"] == "1"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (0.0201, "21ms"), (1.5, "1.5s"), (59.9, "59.9s"), (360, "6m0s"), (3723, "1h2m3s")],
)
def test_durations_use_openai_go_style_notation_and_parse_back(seconds, text):
    assert format_duration(seconds) == text
    assert parse_duration(text) == pytest.approx(seconds, abs=0.001)


def test_unparseable_durations_are_none():
    assert parse_duration("soon") is None and parse_duration(None) is None
    assert parse_duration("2") == 2.0
