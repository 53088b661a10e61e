"""Fixtures: the digits ImageFolder and a fake-backend LUT database, built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.training.helpers import make_lut_db
from training.data import make_digits_imagefolder


@pytest.fixture(scope="session")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_digits_imagefolder(tmp_path_factory.mktemp("digits"), per_class=24)


@pytest.fixture(scope="session")
def lut_db(tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_lut_db(tmp_path_factory.mktemp("lut") / "lut.db")
