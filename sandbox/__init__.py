"""Aggregator sandbox: a Powens-compatible (Budget Insight API 2.0) stand-in, run as its own HTTP server.

`python -m sandbox --port 8010` serves it. It is not one of the four services and imports nothing from them.
Layout: pure logic in `clock`, `banks`, `memos`, `generator`, `listing`, `faults`, `views`, `webview`;
in-memory state in `store`; HTTP in `api` and `app`; webhook delivery in `webhooks`.
"""
