"""What the importer does, a module per subject, each a class over the ports (load, decide, store,
announce): `intake` (raw bank lines and balances, undoing a reconciliation), `categorizations` (the
categorizer's results), `accounts` (what the API asks), `details` (what the connector says of
aggregator accounts)."""
