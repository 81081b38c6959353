"""Tests of reuse by content digest."""
