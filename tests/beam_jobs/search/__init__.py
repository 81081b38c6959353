"""Tests of the query side."""
