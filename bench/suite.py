"""Every benchmark, registered in the order they run (a limit is measured before what is compared with it).

A new benchmark is one module with one `@benchmark(...)` function (see `bench.registry`), imported here.
"""

from bench import kafka_rates, mongo_rates  # isort: skip  (limits first)
from bench import connector  # isort: skip
from bench import categorizer  # isort: skip
from bench import importer  # isort: skip
from bench import first_sync  # isort: skip
from bench import pipeline  # isort: skip  (the longest, last but the soak)
from bench import soak  # isort: skip  (a fixed 22 minutes of traffic, last)

__all__ = [
    "categorizer",
    "connector",
    "first_sync",
    "importer",
    "kafka_rates",
    "mongo_rates",
    "pipeline",
    "soak",
]
