"""The connector's adapters: MongoDB (mongo.py), Kafka (kafka.py), the aggregator and the entitlements
service over HTTP (powens.py, entitlements.py)."""
