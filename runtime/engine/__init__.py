"""The incremental engine core: the planner (which rows an edit touches), propagation through the stage
graphs, attention state and its lazy update, sound float bounds, the per-document state, and the
optional C kernels.
"""
