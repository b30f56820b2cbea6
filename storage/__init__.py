"""Rows and encryption at rest: models, the Store (inbox, outbox, deadlines, state), migrations.

May import domain/ (the request codec), nothing above it.
"""
