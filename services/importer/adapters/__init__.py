"""The importer's adapters: MongoDB (`mongo`: the documents, queries and indexes), Kafka (`kafka`: the
announcements), and the locks of one process (`locks`)."""
