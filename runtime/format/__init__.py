"""The model directory's contract, torch-free: the stage table and its costs, the typed model spec, the
manifest, and writes that cannot lose data. `model/` and `export/` import their choices and checks from
here.
"""
