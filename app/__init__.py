"""RPM, the Risk & Portfolio Manager."""


def create_app(settings=None, **kwargs):
    """Build the Flask service (imports Flask only when called)."""
    from .factory import create_app as _create_app

    return _create_app(settings, **kwargs)
