"""Chaos experiments, shared by ``manage.py chaos`` and the CI tests (chaos/tests).

A scenario (chaos.scenarios.catalogue) is a fault plus what the stack must do under it.
:func:`run_scenario` drives one against a running stack (``make run``'s, or a
:class:`~chaos.scenarios.stack.LocalStack`): steady state -> fixed-rate traffic ->
inject -> observe -> heal -> recovery -> verdict; :mod:`chaos.scenarios.report` writes
the Markdown, JSON and PNG. See chaos/README.md.
"""

from chaos.scenarios.base import Check, Scenario
from chaos.scenarios.catalogue import SCENARIOS
from chaos.scenarios.client import ChaosError
from chaos.scenarios.faults import Endpoints, heal_everything
from chaos.scenarios.runner import RunContext, run_scenario

__all__ = [
    "SCENARIOS",
    "ChaosError",
    "Check",
    "Endpoints",
    "RunContext",
    "Scenario",
    "heal_everything",
    "run_scenario",
]
