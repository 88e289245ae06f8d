"""The markers behind ``make test-fast`` (``-m "not kafka and not slow"``) stay true."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import streamvgan


def test_every_slow_doctest_name_still_documents_an_example(request: pytest.FixtureRequest):
    """A listed name that no docstring with examples carries any more (renamed, moved into
    another object) would silently put a training doctest back into the fast lane."""
    (slow_doctests,) = [
        plugin.SLOW_DOCTESTS
        for plugin in request.config.pluginmanager.get_plugins()
        if hasattr(plugin, "SLOW_DOCTESTS")
    ]  # from tests/conftest.py
    finder = doctest.DocTestFinder()
    with_examples = set()
    for info in pkgutil.walk_packages(streamvgan.__path__, "streamvgan."):
        module = importlib.import_module(info.name)
        with_examples |= {t.name.rsplit(".", 1)[-1] for t in finder.find(module) if t.examples}
    assert sorted(slow_doctests - with_examples) == []


def test_tests_using_the_broker_are_marked_kafka(request: pytest.FixtureRequest):
    """The conftest hook marks them; checked on whatever this run collected (all of them in
    ``make test``)."""
    unmarked = [
        item.nodeid
        for item in request.session.items
        if "kafka_broker" in getattr(item, "fixturenames", ())
        and item.get_closest_marker("kafka") is None
    ]
    assert unmarked == []
