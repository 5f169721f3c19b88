"""Errors meant for the user: the CLI prints their message on one line and exits non-zero, no traceback."""


class UserError(Exception):
    """Bad input or a missing artifact: something the user can fix. The message says what and how."""
