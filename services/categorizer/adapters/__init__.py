"""The categorizer's adapters: `mongo` (the documents, queries and indexes behind RuleSets, Projection
and Transfers) and `kafka` (the announce port, and the operations topic's records as messages)."""
