"""Authentication: turning a request's credentials into a Principal (see fleetql.access)."""

from fleetql.auth.authenticator import AuthenticationError, Authenticator

__all__ = ["AuthenticationError", "Authenticator"]
