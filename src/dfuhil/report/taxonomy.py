"""Failure categories from dfuhil's error taxonomy (:mod:`dfuhil.errors`), not from messages.

Each failed result carries the label ``failure`` naming who has to act: ``infrastructure`` (the
rig: probe, port, farm, lab host), ``product`` (the firmware did something wrong: a
ProductError or a failed assertion about it), ``input`` (a bad file handed to the run) or
``test`` (anything else: a bug in a test or in dfuhil). The report's categories match that
label; retried and flaky results get their own category.
"""

from __future__ import annotations

from typing import Any

from dfuhil.errors import InfrastructureError, InputError, ProductError

LABEL = "failure"
INFRASTRUCTURE, PRODUCT, INPUT, TEST = "infrastructure", "product", "input", "test"

CATEGORY_NAMES = {
    INFRASTRUCTURE: "Infrastructure failures (probe, port, farm, lab host)",
    PRODUCT: "Product failures (the firmware's behaviour)",
    INPUT: "Bad input (boards.yaml, images, keys)",
    TEST: "Test or framework errors",
}
FLAKY_NAME = "Flaky or retried"


def infrastructure_cause(exc: BaseException) -> InfrastructureError | None:
    """The InfrastructureError that ``exc`` is, or that caused it (``raise ... from``, or raised
    while handling it); None for a product or input failure, whatever caused those."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, InfrastructureError):
            return current
        if isinstance(current, InputError | ProductError | AssertionError):
            return None  # the product's or the input's fault, even if the rig failed after
        current = current.__cause__ or (
            None if current.__suppress_context__ else current.__context__
        )
    return None


def kind_of(exc: BaseException) -> str:
    """Who has to act on ``exc``, by its class: the taxonomy first (an error caused by the rig is
    the rig's), then pytest's failures."""
    if infrastructure_cause(exc) is not None:
        return INFRASTRUCTURE
    if isinstance(exc, InputError):
        return INPUT
    if isinstance(exc, ProductError | AssertionError):
        return PRODUCT
    # pytest.fail() in a fixture or test states a product expectation in words. (The library
    # knows nothing of pytest, so its Failed outcome is recognised by name and base class.)
    bases = {f"{c.__module__}.{c.__name__}" for c in type(exc).__mro__}
    if type(exc).__name__ == "Failed" and "_pytest.outcomes.OutcomeException" in bases:
        return PRODUCT
    return TEST


def category_rules() -> list[dict[str, Any]]:
    """Allure 3 ``categories`` rules: flaky first, then one per kind, grouped by board."""
    rules: list[dict[str, Any]] = [
        {
            "id": "dfuhil-flaky",
            "name": FLAKY_NAME,
            # Allure flags a result flaky when its history flips, or when tries of it in one
            # run (a rerun plugin's retries share its historyId) disagree.
            "matchers": {"flaky": True},
            "groupBy": [{"label": "board"}],
        }
    ]
    for kind, name in CATEGORY_NAMES.items():
        rules.append(
            {
                "id": f"dfuhil-{kind}",
                "name": name,
                "matchers": {"labels": {LABEL: kind}},
                "groupBy": [{"label": "board"}],
                "expand": True,
            }
        )
    return rules
