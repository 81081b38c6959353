"""Tests of the Beam side's storage."""
