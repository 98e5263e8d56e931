"""The one exception type a user is meant to see.

Anything raised as a `HarnessError` is a problem with the user's input (a name, a file, a flag, a
dataset root): the CLI prints its message as one paragraph and exits non-zero, without a traceback, and a
sweep never retries it. A `TransientError` is one that may pass by itself (a download cut off): a sweep retries
it like a crash. Everything else is a bug and keeps its traceback.
"""


class HarnessError(Exception):
    """A user-facing error whose message names what was wrong and what is accepted."""


class TransientError(HarnessError):
    """A user-facing error that a retry may not meet again (a network failure)."""
