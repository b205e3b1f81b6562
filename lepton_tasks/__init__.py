"""Lepton's task library: the pipeline steps as plain functions and the `lepton-tasks` CLI.

This package never imports Airflow: the same commands run as local processes, in Docker
containers and in Kubernetes pods.
"""

__version__ = "0.2.0"
