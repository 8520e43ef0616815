"""The ZConfig datatype of the <neo> section (component.xml)."""

from ZODB.config import BaseConfig


class NeoStorage(BaseConfig):
    def open(self):
        from .storage import Storage

        config = self.config
        return Storage(
            master_nodes=config.master_nodes,
            name=config.name,
            read_only=config.read_only,
            cache_size=config.cache_size,
            spin_us=config.spin_us,
            blob_dir=config.blob_dir,
            storage_timeout=config.storage_timeout,
            ca=config.ca,
            cert=config.cert,
            key=config.key,
        )
