"""The categorizer's rules: pure, no I/O (but `dictionary`'s loading of the package's own data files).

A module per subject:
- `categories`: the contract's default tree of categories;
- `normalise`: a raw French bank memo turned into the words that matter (`analyse`, `normalise`);
- `matching`: keywords as rules, all of a rule set in one automaton (`Matcher`), the built-in
  `Dictionary`, and the one deterministic pick (`categorize`);
- `rules`: payees, user categories, the `RuleSet` of one user and the commands that change it;
- `suggestions`: keywords that would recognise a memo's payee;
- `transfers`: transfers between the user's own accounts (legs, pairing, what an operation shows);
- `choices`: the user's own choice for an operation;
- `dictionary`: the built-in dictionary and place names (data/), parsed and checked against the rules.
"""
