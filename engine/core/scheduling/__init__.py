"""Scheduling: which ready item runs next (policies) and where it runs (placement).

Pure code over plain data; the service persists :class:`SchedulerState` and the loads.
"""

from kiln.core.scheduling.items import QueuedItem, SchedulerState, UnknownPolicy
from kiln.core.scheduling.placement import (
    STRATEGIES,
    InstanceLoad,
    NoInstances,
    UnknownStrategy,
    add_work,
    finish_work,
    place,
    remove_work,
)
from kiln.core.scheduling.policies import (
    FIFO,
    POLICY_NAMES,
    Fair,
    Policy,
    Priority,
    RoundRobin,
    ShortestPredicted,
    make_policy,
)
from kiln.core.scheduling.scheduler import Decision, Scheduler

__all__ = [
    "FIFO",
    "POLICY_NAMES",
    "STRATEGIES",
    "Decision",
    "Fair",
    "InstanceLoad",
    "NoInstances",
    "Policy",
    "Priority",
    "QueuedItem",
    "RoundRobin",
    "Scheduler",
    "SchedulerState",
    "ShortestPredicted",
    "UnknownPolicy",
    "UnknownStrategy",
    "add_work",
    "finish_work",
    "make_policy",
    "place",
    "remove_work",
]
