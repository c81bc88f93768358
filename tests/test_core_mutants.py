"""Tests that kill mutants of the core found alive by mutmut (docs/mutation.md)."""
