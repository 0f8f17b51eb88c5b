"""What operators do to the ledger, called by both the CLI and the console: dead letters (list,
show, replay, discard), status, an entity's timeline and its synced row, the last hour's outcomes,
pause and resume, and the audit trail every change writes (``audit``). ``inputs`` parses what an
operator types (``--since``, ``--limit``, ids) with the standard library only, for the CLI's fast start.

Functions take a session the caller owns and never commit, except the two that must span several
transactions and take a transaction factory instead: ``dead_letters.in_batches`` (one per batch)
and ``control.resume`` (the flag committed before the held events are released). Nothing here
parses arguments or prints.
"""
