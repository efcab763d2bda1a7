"""The importer service: Deduplication, account mapping and operations."""
