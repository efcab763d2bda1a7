"""The entitlements service: Plans, the Auto-Import option and the sync gate."""
