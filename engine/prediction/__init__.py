"""Execution-time prediction: quantiles from a lookup file or learned online.

Pure code: no I/O beyond reading a lookup file on request.
"""

from engine.prediction.estimate import Estimate, combine, estimate, quantile_value
from engine.prediction.history import GroupHistory
from engine.prediction.lookup import InvalidLookupFile, LookupTable
from engine.prediction.quantile_model import Observation, OnlineQuantileModel, calibration
from engine.prediction.types import DEFAULT_QUANTILES, Prediction

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
