"""Airflow loads Lepton's plugin from its one entry file, and no Lepton module under a bare name.

Airflow imports every .py file under plugins/ as a top-level module named after the file, so
without `plugins/.airflowignore` `runtimes/outcome.py` would replace the `outcome` package
(trio's, used by Selenium) and a `docker.py` would replace the Docker SDK.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.airflow_env import REPO

PROBE = """
import json, sys
from airflow import plugins_manager
plugins, errors = plugins_manager._get_plugins()
package = sys.argv[1]
bare = [
    name for name, module in sys.modules.items()
    if "." not in name and not name.startswith("lepton_")
    and str(getattr(module, "__file__", None) or "").startswith(package)
]
print(json.dumps({
    "plugins": sorted(str(p.source) for p in plugins),
    "errors": errors,
    "bare_modules": sorted(bare),
}))
"""


def test_only_the_entry_file_is_loaded_as_a_plugin(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(tmp_path),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    }
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(REPO / "plugins" / "lepton_airflow")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["errors"] == {}
    assert found["plugins"] == ["$PLUGINS_FOLDER/lepton_plugin.py"]
    assert found["bare_modules"] == []  # e.g. runtimes/outcome.py loaded as `outcome`
