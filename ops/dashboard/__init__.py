"""The live operations dashboard (`python -m ops.dashboard`)."""
