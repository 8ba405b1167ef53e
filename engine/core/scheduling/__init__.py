"""Scheduling: which ready item runs next (policies) and where it runs (placement).

Pure code over plain data; the service persists :class:`SchedulerState` and the loads.
"""

from kiln.core.scheduling.base import Policy
from kiln.core.scheduling.items import QueuedItem, SchedulerState, UnknownPolicy
from kiln.core.scheduling.params import InvalidPolicyParams, Param
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
    Priority,
    RoundRobin,
    ShortestPredicted,
    check_policy_params,
    make_policy,
    policy_or_defaults,
)
from kiln.core.scheduling.scheduler import Decision, Scheduler
from kiln.core.scheduling.tail import Boost, ShortestExpected

__all__ = [
    "FIFO",
    "POLICY_NAMES",
    "STRATEGIES",
    "Boost",
    "Decision",
    "Fair",
    "InstanceLoad",
    "InvalidPolicyParams",
    "NoInstances",
    "Param",
    "Policy",
    "Priority",
    "QueuedItem",
    "RoundRobin",
    "Scheduler",
    "SchedulerState",
    "ShortestExpected",
    "ShortestPredicted",
    "UnknownPolicy",
    "UnknownStrategy",
    "add_work",
    "check_policy_params",
    "finish_work",
    "make_policy",
    "place",
    "policy_or_defaults",
    "remove_work",
]
