"""`make bench` (``bench.run``) and ``bench.profile``: clerk-sync's throughput, lag, CPU and the CLI's
start-up, measured against reference pipelines run in the same minutes (docs/performance.md).
Imports nothing from tests/.
"""
