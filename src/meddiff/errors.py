"""The one exception type for problems a user can fix (bad file, bad key, bad value)."""


class UserError(Exception):
    """A problem with the user's input, reported as one sentence naming the file or key.

    The CLI prints the message and exits with code 2; no stack trace unless ``--debug``.
    """
