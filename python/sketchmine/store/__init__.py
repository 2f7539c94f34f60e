"""The run store's one owner: its schema (paths, attributes, dtypes, chunking), reading,
writing, locking and checksums. No other module imports zarr or spells a store path.
"""
from sketchmine.store.lock import RunLock, enclosing_run
from sketchmine.store.runstore import RunStore, is_run, put_rows

__all__ = ["RunLock", "RunStore", "enclosing_run", "is_run", "put_rows"]
