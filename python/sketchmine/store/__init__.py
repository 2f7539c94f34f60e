"""The run store's one owner: its schema (paths, attributes, dtypes, chunking), reading,
writing, locking and checksums. No other module imports zarr or spells a store path.
"""
from sketchmine.store.lock import RunLock
from sketchmine.store.runstore import RunStore, is_run, put_rows

__all__ = ["RunLock", "RunStore", "is_run", "put_rows"]
