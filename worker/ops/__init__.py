"""What operators do to the ledger, as plain functions on a session the caller owns: dead
letters (list, show, replay, discard), status, an entity's timeline, pause and resume. The CLI
and the console both call these; nothing here parses arguments, prints or commits.
"""
