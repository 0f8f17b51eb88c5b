"""What every process needs (ingress, worker, beat, console, CLI), importing nothing from them: the
settings and the recovery timings derived from them, logging, the database models and engine, the
ledger's statuses, the schema revision they need, metrics, the one Redis client factory, Clerk's
objects as typed structs, the event model (the one parser of a raw body), the resource table, the
publisher that puts events on the queue and the receipt protocol that keeps them from being lost,
console password hashing, text escaped for an operator's terminal, whether a server may listen where it is
configured to, and stopping with one's parent.
"""
