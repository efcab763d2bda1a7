"""The two ways an ops command ends badly: the operator asked for something malformed (exit 2),
or the platform could not do it (exit 1)."""

from __future__ import annotations


class OpsError(Exception):
    """The command was well formed but could not be done (unreachable service, missing record...)."""

    exit_code = 1


class BadArgument(OpsError):
    """The command line itself is wrong."""

    exit_code = 2
