"""Dagster definitions: the one Definitions object, jobs, schedules and sensors."""
