"""Importing this module registers every backend of the device with the core's registry."""
from .device import backend as _device  # noqa: F401
from .install import backend as _install  # noqa: F401
from .ownership import backend as _ownership  # noqa: F401
from .pki import backend as _pki  # noqa: F401
