"""The connector service: Aggregator link, scheduling and raw transaction events."""
