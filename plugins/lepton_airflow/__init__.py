"""Lepton's Airflow side: the step operator factory and its runtimes (local, docker, kubernetes)."""
