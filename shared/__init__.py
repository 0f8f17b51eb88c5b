"""What every process needs (ingress, worker, beat, CLI), importing nothing from them: the
settings, logging, the database models and engine, the schema revision they need, metrics, the one
Redis client factory, the publisher that puts events on the queue, and the receipt protocol that
keeps them from being lost.
"""
