"""Reading a run: `Run` (typed accessors over the store), pure analysis functions over its
arrays, comparisons between runs.
"""
