"""Dagster definitions: the one Definitions object, jobs, schedules, sensors, runner and CLI."""
