"""The stack helpers live in shared.devstack (benchmarks use them too)."""

from shared.devstack import WEBHOOK_SECRET, Stack, connector_stack, new_user

__all__ = ["WEBHOOK_SECRET", "Stack", "connector_stack", "new_user"]
