"""The error type for mistakes in what the user asked for."""


class UserError(Exception):
    """Bad input from the user: reported as one line, exit status 2, no traceback."""
