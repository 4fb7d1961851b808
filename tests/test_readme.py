"""The README tells the truth: its Quickstart has the two commands CI relies on, and its code runs."""

import pathlib
import re
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def quickstart_commands():
    section = README.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line for line in block.splitlines() if line.strip()]


def test_quickstart_has_an_install_and_demo_command_and_an_install_and_test_command():
    install_and_run, install_and_test = quickstart_commands()
    assert install_and_run.startswith("pip install ") and "python -m bbvi" in install_and_run
    assert install_and_test.startswith("pip install ") and "pytest" in install_and_test


def test_ci_runs_the_quickstart_test_command():
    script = ROOT / ".ci" / "run"
    found = subprocess.run(
        [
            "bash",
            "-c",
            "sed -n '/^## Quickstart/,/^## [^Q]/p' README.md | grep -m1 -E '^pip install .*pytest'",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert found == quickstart_commands()[1]
    assert 'eval "$test_command"' in script.read_text()


@pytest.mark.slow
def test_python_examples_run():
    namespace = {}
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    assert len(blocks) >= 3
    for block in blocks:
        exec(compile(block.replace("num_steps=3000", "num_steps=300"), "README.md", "exec"), namespace)
    assert namespace["draws"]["sigma"].shape == (1000,)
    assert bool((namespace["draws"]["sigma"] > 0).all())
    assert namespace["fits"].elbo.shape == (8, 300)
    assert namespace["grad"]["mu"]["loc"].shape == ()
