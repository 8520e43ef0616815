"""neo-rs: NEO for ZODB, rebuilt in Rust. ``Storage`` is the ZODB storage."""

from .storage import Storage

__all__ = ["Storage"]
