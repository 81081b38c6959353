"""Tests of beam_jobs."""
