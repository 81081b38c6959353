"""Tests of the DAG's steps."""
