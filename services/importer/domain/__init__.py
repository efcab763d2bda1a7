"""The importer's rules, pure (no I/O), a module per subject:

- `identities`: the ids of operations, app accounts and lines (deterministic where a replay must find
  them again);
- `memos`: how alike two bank memos are;
- `lines`: dedup, account mapping and reconciliation of one aggregator account's lines;
- `intake`: what a raw record is, why one cannot be imported, and the counts of an import;
- `balances`: the bank's balance checked against the operations the app holds;
- `accounts`: app accounts, links and what the bank says of its accounts, as records and as shown;
- `operations`: operations as stored and shown, what the user may change, searching;
- `categorizations`: which categorisation of an operation wins, and the sheets they are filed in;
- `events`: the events the importer announces, built from these records.
"""
