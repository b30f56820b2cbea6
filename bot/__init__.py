"""The Matrix adapter and the composition root: sync, dispatch, outbox, deadlines, trust, CLI.

The only layer that talks to the homeserver; it imports every layer below it and nothing imports it.
"""
