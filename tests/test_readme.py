"""README.md shows the two set-up commands, and CI runs exactly the test one."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    command = re.search(r"TEST_COMMAND='([^']+)'", ci).group(1)
    assert command in readme.splitlines()
    assert "pytest" in command


def test_readme_shows_the_demo_command():
    readme = (ROOT / "README.md").read_text()
    assert re.search(r"^pip install .*ptqengine demo$", readme, re.M)
