"""Optuna's sampler conformance suites (``optuna.testing.pytest_samplers``) run against
``MROSampler(seed=0)``, as Optuna runs them against its own samplers: every case of the basic,
relative and multi-objective suites, none skipped. They exercise what a user's script may ask of
a sampler: any distribution, conditional parameters, fixed and partially fixed parameters,
``sample_relative`` called directly with a search space of hyperparameters."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from optuna.samplers import BaseSampler
from optuna.testing.pytest_samplers import (
    BasicSamplerTestCase,
    MultiObjectiveSamplerTestCase,
    RelativeSamplerTestCase,
)

from search_service.sampler import MROSampler


class MROSamplerCase:
    @pytest.fixture
    def sampler(self) -> Callable[[], BaseSampler]:
        return lambda: MROSampler(seed=0)


class TestBasic(MROSamplerCase, BasicSamplerTestCase):
    pass


class TestRelative(MROSamplerCase, RelativeSamplerTestCase):
    pass


class TestMultiObjective(MROSamplerCase, MultiObjectiveSamplerTestCase):
    pass
