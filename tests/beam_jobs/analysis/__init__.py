"""Tests of a day's analysis products."""
