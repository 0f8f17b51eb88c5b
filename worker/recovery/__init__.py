"""Beat's periodic jobs that bound how long anything accepted can stay unapplied: failed events
whose retry is due, pending events whose message was lost, messages lost inside Redis (through the
receipts of ``shared.receipts``), and the retention of stored payloads.
"""
