"""Gateway keys: authentication, the key store, runtime keys and their admin.

This module is the wing's front door: other parts of the gateway import from here only."""

from __future__ import annotations

from gateway.keys.admin import KeyAdmin, build_key_admin
from gateway.keys.record import KeyRecord
from gateway.keys.store import Caller, KeyStore, bearer_token, key_attributes

__all__ = [
    "Caller",
    "KeyAdmin",
    "KeyRecord",
    "KeyStore",
    "bearer_token",
    "build_key_admin",
    "key_attributes",
]
