"""The errors a user can meet, a bad flag, file, checkpoint or data set, all `UserError`s; the
subclasses only say which part of the package refused.

Every command turns a `UserError` into one sentence on stderr and exit code 2, before any work
starts where it can; anything else is a bug and keeps its traceback.
"""

__all__ = ['UserError', 'ConfigError', 'CheckpointError', 'DataError', 'GrowthError', 'ShardError', 'DivergedError']


class UserError(ValueError):
    """A request that cannot be carried out as given; the message names the thing and the fix."""


class CheckpointError(UserError):
    """A checkpoint that cannot be used; the message names the file and the fix."""


class ConfigError(UserError):
    """A config file or flag that cannot be used; the message names it and the fix."""


class DataError(UserError):
    """Data that cannot be loaded as asked; the message names the thing and the fix."""


class GrowthError(UserError):
    """A growth request that cannot be carried out; the message names the fix."""


class ShardError(UserError):
    """A request make_shards cannot carry out; the message names the fix."""


class DivergedError(UserError):
    """Training whose loss became NaN or infinite; the message names the step and the fix."""
