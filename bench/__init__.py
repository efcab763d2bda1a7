"""Benchmarks of the bank-sync stack on this machine (`make bench`, `python -m bench`).

The first benchmarks measure the engines' raw limits (Kafka produce/consume with aiokafka, MongoDB-wire
bulk upserts); later ones (connector, importer, categorizer, nightly run) register themselves the same
way in `bench.suite` and are compared with those limits. See `bench.registry`.
"""
