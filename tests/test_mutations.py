"""The named mutations of tests/mutations/ are each killed by the tests they name."""

import os

import pytest

from tests.mutations import run


@pytest.mark.parametrize("name", run.names())
def test_mutation_is_killed(name: str) -> None:
    mutation = run.load(name)
    if mutation.needs_env and not os.environ.get(mutation.needs_env):
        pytest.skip(f"its killing tests need {mutation.needs_env}")  # CI sets it (.ci/run)
    outcome = run.check(mutation)
    assert outcome.killed, f"{name} ({mutation.promise}): {outcome.why}"


def test_every_mutation_names_a_killer_and_applies_once() -> None:
    assert run.names(), "no mutations are catalogued"
    for name in run.names():
        mutation = run.load(name)
        assert mutation.killed_by, name
        assert mutation.diff(), f"{name} changes nothing"
