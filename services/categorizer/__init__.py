"""The categorizer service: Payees, keywords and categories."""
