"""Domain backends. Importing this package registers each of them with nc_server."""
from .device import backend as _device  # noqa: F401
