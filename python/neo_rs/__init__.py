"""neo-rs: NEO for ZODB, rebuilt in Rust. ``Storage`` is the ZODB storage."""

from .storage import ClientDisconnected, NotCommitted, Storage

__all__ = ["ClientDisconnected", "NotCommitted", "Storage"]
