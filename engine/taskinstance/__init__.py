"""TaskInstances: the client Kiln's workers use, and a reference simulated instance.

The client side is importable without Flask::

    from kiln.taskinstance import TaskInstanceClient

The server lives in :mod:`kiln.taskinstance.server.app` (``python -m
kiln.taskinstance.server.app --model-type m``); it is not imported here so that workers
do not pull in the web stack and ``python -m`` runs it cleanly.
"""

from kiln.taskinstance.client import (
    InstanceRejected,
    InstanceUnavailable,
    OpenAICompatClient,
    ProtocolViolation,
    RateLimited,
    ResultTimeout,
    TaskIdConflict,
    TaskInstanceClient,
    TaskInstanceError,
    TaskNotFound,
)
from kiln.taskinstance.protocol import (
    EnqueueReceipt,
    InstanceStatus,
    Progress,
    QueuePrediction,
    QueueStatus,
    TaskResult,
)

__all__ = [
    "EnqueueReceipt",
    "InstanceRejected",
    "InstanceStatus",
    "InstanceUnavailable",
    "OpenAICompatClient",
    "Progress",
    "ProtocolViolation",
    "QueuePrediction",
    "QueueStatus",
    "RateLimited",
    "ResultTimeout",
    "TaskIdConflict",
    "TaskInstanceClient",
    "TaskInstanceError",
    "TaskNotFound",
    "TaskResult",
]
