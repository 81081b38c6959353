"""Beam jobs shipped to Dataflow workers and run locally on the DirectRunner."""
