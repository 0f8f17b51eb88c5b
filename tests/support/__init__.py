"""What the tests share, one helper of each kind: processes, the ledger, the CLI, the queue, signing.

New tests use these rather than writing their own (the table is in docs/development.md).
"""
