"""A worker resolves the same handler names for every task: resolved once, then looked up,
without letting a cached function outlive what its module holds or the allowlist it passed."""

from __future__ import annotations

import sys
import types

import pytest

from kiln.core.errors import HandlerNotAllowed
from kiln.core.handlers import resolve_handler


@pytest.fixture
def module():
    mod = types.ModuleType("kiln_resolution_probe")

    def first() -> str:
        return "first"

    first.__module__ = mod.__name__
    mod.first = first
    mod.handler = first
    sys.modules[mod.__name__] = mod
    yield mod
    del sys.modules[mod.__name__]


def test_a_path_handler_resolves_to_the_same_function_each_time(module):
    name = "kiln_resolution_probe:handler"
    assert resolve_handler(name, ["kiln_resolution_probe"]) is module.first
    assert resolve_handler(name, ["kiln_resolution_probe"]) is module.first


def test_a_handler_reassigned_in_its_module_resolves_to_the_new_function(module):
    name = "kiln_resolution_probe:handler"
    assert resolve_handler(name, ["kiln_resolution_probe"])() == "first"

    def second() -> str:
        return "second"

    second.__module__ = module.__name__
    module.handler = second
    assert resolve_handler(name, ["kiln_resolution_probe"])() == "second"


def test_a_handler_resolved_under_one_allowlist_is_still_refused_under_another(module):
    name = "kiln_resolution_probe:handler"
    resolve_handler(name, ["kiln_resolution_probe"])
    with pytest.raises(HandlerNotAllowed):
        resolve_handler(name, ["some_other_module"])
