"""The DAG's steps: params and run plan, task bodies, operators, launch, staging, validation."""
