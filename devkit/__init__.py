"""Development helpers shared by the tests and the benchmark, never by the service itself.

- ``services``: a throwaway migrated database and a leased Redis db index on the local servers;
- ``waiting``: poll until something is true;
- ``history``: Clerk histories in Clerk's order and the reference model of what they converge
  to (the property tests, and the benchmark's realistic traffic).
"""
