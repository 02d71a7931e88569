"""The one base class of the errors a user can meet: a bad flag, file, checkpoint or data set.

Every command turns a `UserError` into one sentence on stderr and exit code 2, before any work
starts where it can; anything else is a bug and keeps its traceback.
"""

__all__ = ['UserError']


class UserError(ValueError):
    """A request that cannot be carried out as given; the message names the thing and the fix."""
