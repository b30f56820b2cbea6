"""Pure domain core, no I/O: request state machine, escalation ladder, permissions, red-flag
thresholds, parcours and flows models, French text, clocks.
"""
