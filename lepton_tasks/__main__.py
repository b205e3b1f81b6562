"""`python -m lepton_tasks` is `lepton-tasks`."""

from lepton_tasks.cli import main

main()
