"""The pipeline steps: each a pure core function plus its CLI command in `lepton_tasks.cli`."""
