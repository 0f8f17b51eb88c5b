"""Development helpers shared by the tests and the benchmark, never by the service itself.

- ``services``: a throwaway migrated database and a leased Redis db index on the local servers;
- ``waiting``: poll until something is true.
"""
