"""The connector's rules, without I/O, one module per subject: failures, the bank's lines, accounts and
connections, sync runs, account states, the night, the gate's rights, secrets and webhooks."""
