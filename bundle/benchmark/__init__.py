"""``ctv2v benchmark``: training and inference speed, memory and FLOP/s, one table per run.

Every row of a run is measured side by side in one process (this machine may be shared: ratios
measured together are the figures that count, absolute times are context). docs/benchmarks.md.
"""
