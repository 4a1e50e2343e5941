"""Real edit histories: the trace format and their replay through documents (shared by the CLI and the
benchmarks).
"""
