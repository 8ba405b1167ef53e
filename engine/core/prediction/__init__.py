"""Execution-time prediction: quantiles from a lookup file or learned online.

Pure code: no I/O beyond reading a lookup file on request.
"""

from kiln.core.prediction.estimate import Estimate, combine, estimate, quantile_value
from kiln.core.prediction.history import GroupHistory
from kiln.core.prediction.lookup import InvalidLookupFile, LookupTable
from kiln.core.prediction.quantile_model import Observation, OnlineQuantileModel, calibration
from kiln.core.prediction.types import DEFAULT_QUANTILES, Prediction

__all__ = [
    "DEFAULT_QUANTILES",
    "Estimate",
    "GroupHistory",
    "InvalidLookupFile",
    "LookupTable",
    "Observation",
    "OnlineQuantileModel",
    "Prediction",
    "calibration",
    "combine",
    "estimate",
    "quantile_value",
]
