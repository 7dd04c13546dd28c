"""Data: the sharded PRVR feature store, importers, the synthetic benchmark and the loader."""
