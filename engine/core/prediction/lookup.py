"""Predictions from a static lookup file (``predictions.json``).

The file is a JSON array of rows::

    {"status": "success", "model_type": "gpt-3.5-turbo",
     "model_info": {"type": ..., "name": ..., "hardware": "A100",
                    "software_name": "vllm", "software_version": "0.2.0"},
     "quantiles": [0.1, 0.25, 0.5, 0.75, 0.9],
     "quantile_predictions": [850.0, 1050.0, 1300.0, 1650.0, 2100.0]}

Rows whose ``status`` is not ``success`` are skipped. A lookup matches on ``model_type``, then
keeps the rows whose ``model_info`` equals every metadata field the caller gave; the first
remaining row (file order) wins.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kiln.core.prediction.types import Prediction

#: ``model_info`` fields a caller may filter on.
METADATA_FIELDS = ("type", "name", "hardware", "software_name", "software_version")

_UNIT_SECONDS = {"s": 1.0, "ms": 0.001}


class InvalidLookupFile(ValueError):
    """The prediction lookup file is not a JSON array of prediction rows."""


@dataclass(frozen=True)
class LookupRow:
    model_type: str
    model_info: dict[str, Any]
    prediction: Prediction


@dataclass
class LookupTable:
    """Successful rows of a lookup file, indexed by ``model_type``.

    ``units`` says what ``quantile_predictions`` are measured in (``"ms"``, as in the
    Predictor protocol, or ``"s"``); predictions are always returned in seconds.
    """

    rows: dict[str, list[LookupRow]] = field(default_factory=dict)

    @classmethod
    def from_rows(cls, rows: list[dict[str, Any]], units: str = "ms") -> LookupTable:
        if not isinstance(rows, list):
            raise InvalidLookupFile("a lookup file must hold a JSON array of rows")
        try:
            scale = _UNIT_SECONDS[units]
        except KeyError:
            raise ValueError(
                f"units must be one of {sorted(_UNIT_SECONDS)}, got {units!r}"
            ) from None
        table = cls()
        for row in rows:
            if not isinstance(row, dict) or row.get("status") != "success":
                continue
            try:
                prediction = Prediction(
                    quantiles=tuple(row["quantiles"]),
                    values=tuple(v * scale for v in row["quantile_predictions"]),
                    method="lookup",
                    confidence=float(row.get("confidence", 1.0)),
                )
                model_type = str(row["model_type"])
            except (KeyError, TypeError, ValueError) as exc:
                raise InvalidLookupFile(f"malformed successful row {row!r}: {exc}") from exc
            info = row.get("model_info") or {}
            table.rows.setdefault(model_type, []).append(
                LookupRow(model_type, dict(info), prediction)
            )
        return table

    @classmethod
    def from_file(cls, path: str | Path, units: str = "ms") -> LookupTable:
        try:
            data = json.loads(Path(path).read_text())
        except json.JSONDecodeError as exc:
            raise InvalidLookupFile(f"{path} is not valid JSON: {exc}") from exc
        return cls.from_rows(data, units=units)

    def predict(self, model_type: str, **metadata: Any) -> Prediction | None:
        """The first successful row for ``model_type`` whose ``model_info`` matches every given
        metadata field (``None`` values are ignored); ``None`` when nothing matches."""
        unknown = set(metadata) - set(METADATA_FIELDS)
        if unknown:
            raise ValueError(f"cannot filter on {sorted(unknown)}; known fields: {METADATA_FIELDS}")
        wanted = {k: v for k, v in metadata.items() if v is not None}
        for row in self.rows.get(model_type, []):
            if all(row.model_info.get(k) == v for k, v in wanted.items()):
                return row.prediction
        return None

    def models(self) -> list[dict[str, Any]]:
        """One summary per model type, in the shape of the Predictor's ``GET /models``."""
        summary = []
        for model_type, rows in sorted(self.rows.items()):
            summary.append(
                {
                    "model_type": model_type,
                    "model_name": rows[0].model_info.get("name", model_type),
                    "total_predictions": len(rows),
                    "hardware_types": sorted(
                        {
                            str(r.model_info["hardware"])
                            for r in rows
                            if r.model_info.get("hardware") is not None
                        }
                    ),
                    "software_versions": sorted(
                        {
                            str(r.model_info["software_version"])
                            for r in rows
                            if r.model_info.get("software_version") is not None
                        }
                    ),
                }
            )
        return summary
