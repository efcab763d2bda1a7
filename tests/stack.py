"""The stack helpers live in harness.devstack (benchmarks use them too)."""

from harness.devstack import WEBHOOK_SECRET, Stack, connector_stack, new_user

__all__ = ["WEBHOOK_SECRET", "Stack", "connector_stack", "new_user"]
