"""Whole-system tests."""
