"""
pytest configuration shared by all tests.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True, scope="session")
def _trialTemporaryDirectory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """
    Run the tests in a temporary directory: trial's C{TestCase.mktemp} makes
    paths under the current directory, which would otherwise be the source
    tree.
    """
    previous = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("trial"))
    yield
    os.chdir(previous)
