"""The library's error tree: every error it raises is a CustomerIOLoggingError."""

from __future__ import annotations

__all__ = [
    "ConfigurationError",
    "CustomerIOLoggingError",
    "DeliveryError",
    "InvalidEventError",
]


class CustomerIOLoggingError(Exception):
    """Base class of every error raised by customerio_logging."""


class ConfigurationError(CustomerIOLoggingError, ValueError):
    """A setting is missing or malformed.

    The message names the argument or environment variable to change.

    Attributes:
        setting: The keyword argument at fault (``"batch_size"``), if one is.
        env_var: The environment variable it can also come from, if any.
    """

    def __init__(self, message: str, *, setting: str | None = None, env_var: str | None = None):
        super().__init__(message)
        self.setting = setting
        self.env_var = env_var


class InvalidEventError(CustomerIOLoggingError, ValueError):
    """A tagged record cannot become a valid Track API operation.

    Never raised into the application's log call: the bridge counts the event as
    ``invalid`` and keeps this error as the dead-letter reason.

    Attributes:
        reason: A short machine-readable code, e.g. ``"name_too_long"``.
        field: The operation field at fault (``"name"``, ``"attributes.plan"``), if known.
    """

    def __init__(self, message: str, *, reason: str, field: str | None = None):
        super().__init__(message)
        self.reason = reason
        self.field = field


class DeliveryError(CustomerIOLoggingError):
    """A batch could not be delivered to the Track API.

    Attributes:
        status_code: The HTTP status the API answered, or None for a network error.
    """

    def __init__(self, message: str, *, status_code: int | None = None):
        super().__init__(message)
        self.status_code = status_code
