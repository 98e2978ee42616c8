"""README.md shows the two set-up commands, and CI runs exactly those, in order, read from README.md."""
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CI = ROOT / ".ci" / "run"


def ci_readme_command(n: int) -> str:
    """What .ci/run's own readme_command function extracts from README.md."""
    script = CI.read_text()
    function = re.search(r"^readme_command\(\) \{.*?^\}", script, re.S | re.M).group(0)
    proc = subprocess.run(["bash", "-c", f"{function}\nreadme_command {n}"], cwd=ROOT,
                          capture_output=True, text=True, check=True, timeout=60)
    return proc.stdout.strip()


def test_ci_runs_the_readme_commands_verbatim_and_in_order():
    readme = (ROOT / "README.md").read_text().splitlines()
    install_demo, tests = ci_readme_command(1), ci_readme_command(2)
    assert install_demo in readme and tests in readme
    assert readme.index(install_demo) < readme.index(tests)
    assert install_demo.endswith("ptqengine demo")
    assert "pytest" in tests and tests.startswith("pip install")
    ci = CI.read_text()
    assert ci.index('bash -c "$INSTALL_DEMO"') < ci.index('run_tests "$TEST_COMMAND"')
    assert install_demo not in ci and tests not in ci  # read from README.md, never copied


def test_readme_shows_the_demo_command():
    readme = (ROOT / "README.md").read_text()
    assert re.search(r"^pip install .*ptqengine demo$", readme, re.M)
