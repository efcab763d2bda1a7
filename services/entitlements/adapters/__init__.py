"""The entitlements' ports on the engines: MongoDB (`mongo`), Kafka (`kafka`), in-process locks (`locks`)."""
