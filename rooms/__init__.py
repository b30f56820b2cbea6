"""The use cases: what happens in the rooms (patient circles, requests and their ladder, red flags,
directory, access). Effects are queued in the outbox of the caller's transaction, never sent from here.
"""
