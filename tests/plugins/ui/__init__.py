"""Tests of the report and the UI view."""
