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


def _bash_blocks(text: str):
    return re.findall(r"```bash\n(.*?)```", text, re.S)


def _cd_outside_subshell(line: str) -> bool:
    """A `cd` that would move the pasting user's shell: not inside ( ... ) on its line."""
    code = line.split("#", 1)[0]
    depth = 0
    for match in re.finditer(r"[()]|(?<![\w-])cd(?=\s)", code):
        token = match.group(0)
        if token == "(":
            depth += 1
        elif token == ")":
            depth -= 1
        elif depth == 0:
            return True
    return False


def test_every_readme_block_is_safe_to_paste_as_a_whole():
    """A pasted block must not strand the shell elsewhere when one of its commands fails (hb_mapper is not
    installed for most readers): every cd happens in a subshell."""
    blocks = _bash_blocks((ROOT / "README.md").read_text())
    assert len(blocks) >= 4
    stranding = [line for block in blocks for line in block.splitlines() if _cd_outside_subshell(line)]
    assert stranding == []


def test_the_cd_check_catches_a_bare_cd():
    assert _cd_outside_subshell("cd out && hb_mapper makertbin && cd ..")
    assert _cd_outside_subshell("ptqengine demo; cd x")
    assert not _cd_outside_subshell("(cd out && hb_compile --config config.yaml)")
    assert not _cd_outside_subshell("ptqengine calibrate --no-cd x  # cd in a comment")
