"""The entitlements' rules, pure (no I/O), one module per subject.

`rights`: plans, options and the sync right (the gate's decision); `commands`: what changes them;
`history`: a change as recorded and announced (who, when, why); `erasure`: erasing a user (RGPD art. 17).
"""
