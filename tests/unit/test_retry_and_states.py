from __future__ import annotations

import random

from kiln.core.retry import backoff_s
from kiln.core.states import (
    TASK_TERMINAL,
    TASK_TRANSITIONS,
    WORKFLOW_TERMINAL,
    WORKFLOW_TRANSITIONS,
)


def test_backoff_grows_exponentially_with_jitter_and_respects_the_cap():
    rng = random.Random(1)
    waits = [backoff_s(n, base_s=1.0, max_s=30.0, rng=rng) for n in range(1, 8)]
    for n, wait in enumerate(waits, start=1):
        cap = min(30.0, 2 ** (n - 1))
        assert cap / 2 <= wait <= cap
    assert len({round(w, 6) for w in waits}) == len(waits)


def test_terminal_states_allow_no_further_transition():
    assert all(not TASK_TRANSITIONS[s] for s in TASK_TERMINAL)
    assert all(not WORKFLOW_TRANSITIONS[s] for s in WORKFLOW_TERMINAL)
