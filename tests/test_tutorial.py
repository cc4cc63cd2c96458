"""docs/tutorial.md works: every shell block runs, in order, on tiny budgets, and prints what the text shows.

The walk itself (:func:`test_the_tutorial_runs_end_to_end`) is its own tier (marker ``tutorial``):
``scripts/test.sh`` runs it in a second pytest process after the rest of the suite.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import tutorial_runner as tr

DOCS = tr.ROOT / "docs"
LINKED_PAGES = [DOCS / "tutorial.md", DOCS / "diagrams.md", tr.ROOT / "README.md"]
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_shape_matching_lets_numbers_change_and_nothing_else() -> None:
    shown = "expert: success 1.000, mean reward 6.705\n…\nreport: eval/…/report.md"
    assert tr.missing_lines(shown, "expert: success 0.250, mean reward -2.5\nx\nreport: eval/tiny/report.md") == []
    assert tr.missing_lines(shown, "expert: failure 0.250, mean reward -2.5\nreport: eval/tiny/report.md") == [
        "expert: success 1.000, mean reward 6.705"]
    # In order: a line shown after another must come after it.
    assert tr.missing_lines("b 1\na 2", "a 2\nb 1") == ["a 2"]
    assert tr.missing_lines("1,011,200 parameters", "618,880 parameters") == []


def test_blocks_pair_each_command_with_the_output_after_it() -> None:
    text = "x\n```bash\necho hi\n```\n\n```text\nhi\n```\n```bash gpu\nnvidia-smi\n```\n```text\nlone\n```\n"
    found = tr.blocks(text)
    assert [(b.lang, b.tag, b.expected) for b in found] == [
        ("bash", "", "hi\n"), ("bash", "gpu", "lone\n")]
    with pytest.raises(ValueError, match="never closes"):
        tr.blocks("```bash\necho\n")


def test_tiny_budgets_are_appended_to_whole_commands() -> None:
    command = ".venv/bin/python -m training.evaluate --policy expert \\\n    --suite tiny-v0 --out e\nls\n"
    text, used = tr.tiny(command)
    assert used == {"-m training.evaluate"}
    assert text.splitlines()[1].endswith("--out e --episodes 4") and text.splitlines()[2] == "ls"


def test_every_tiny_budget_still_matches_a_command_of_the_tutorial() -> None:
    runnable = [b for b in tr.blocks(tr.TUTORIAL.read_text()) if b.lang == "bash" and b.tag != "gpu"]
    _, used = tr.script(runnable)
    assert used == set(tr.TINY), f"TINY keys matching no command of docs/tutorial.md: {set(tr.TINY) - used}"


def test_every_fenced_block_is_a_command_or_its_output() -> None:
    for block in tr.blocks(tr.TUTORIAL.read_text()):
        assert (block.lang, block.tag) in {("bash", ""), ("bash", "gpu"), ("mermaid", "")}, (
            f"docs/tutorial.md:{block.line}: a ```{block.lang} {block.tag} block that follows no bash block")


@pytest.mark.parametrize("page", LINKED_PAGES, ids=lambda p: p.name)
def test_links_and_images_resolve(page: Path) -> None:
    broken = []
    for target in _LINK.findall(page.read_text()):
        if re.match(r"[a-z]+://|mailto:", target):
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and file.suffix == ".md":
            headings = {_slug(h) for h in re.findall(r"^#+ (.+)$", file.read_text(), flags=re.M)}
            if anchor not in headings:
                broken.append(f"{target} (no heading #{anchor} in {file.name})")
    assert not broken, f"{page.name}: broken links: {broken}"


def test_readme_points_to_the_tutorial_first() -> None:
    readme = (tr.ROOT / "README.md").read_text()
    links = [t for t in _LINK.findall(readme) if t.startswith("docs/")]
    assert links and links[0] == "docs/tutorial.md", f"README's first link into docs/ is {links[:1]}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) counts as gone.
    stat = Path(f"/proc/{pid}/stat")
    return not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


def test_a_runner_sent_sigterm_stops_the_session_it_started(tmp_path: Path) -> None:
    pidfile = tmp_path / "server.pid"
    runner = subprocess.Popen([sys.executable, "-c", (
        "import os, sys; from pathlib import Path; sys.path.insert(0, os.getcwd())\n"
        "from tests.tutorial_runner import run_session\n"
        f"run_session(['bash', '-c', 'sleep 300 & echo $! > {pidfile}; wait'], Path('.'), dict(os.environ), 60)")],
        cwd=tr.ROOT)
    try:
        deadline = time.monotonic() + 30
        while not (pidfile.exists() and pidfile.read_text().strip()):
            assert time.monotonic() < deadline and runner.poll() is None, "the session did not start"
            time.sleep(0.05)
        server = int(pidfile.read_text())
        assert _alive(server)
        runner.send_signal(signal.SIGTERM)
        assert runner.wait(30) == 128 + signal.SIGTERM
        deadline = time.monotonic() + 10
        while _alive(server):
            assert time.monotonic() < deadline, f"process {server} of the runner's session outlived it"
            time.sleep(0.05)
    finally:
        runner.kill()
        if pidfile.exists() and pidfile.read_text().strip() and _alive(int(pidfile.read_text())):
            os.kill(int(pidfile.read_text()), signal.SIGKILL)


@pytest.mark.tutorial
def test_the_tutorial_runs_end_to_end(tmp_path: Path) -> None:
    runnable, outputs, rc, _ = tr.run(tmp_path / "clone")
    last = max((n for n, out in enumerate(outputs) if out), default=0)
    assert rc == 0, (f"docs/tutorial.md:{runnable[last].line}: the block failed (exit {rc}):\n"
                     f"{outputs[last][-4000:]}")
    for block, output in zip(runnable, outputs, strict=True):
        gone = tr.missing_lines(block.expected or "", output)
        assert not gone, (f"docs/tutorial.md:{block.line}: shown output no longer printed (in shape): {gone}\n"
                          f"--- it printed:\n{output[-4000:]}")
    # The virtual printer the tutorial started and stopped no longer listens.
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", 7125)) != 0, "the tutorial left its virtual printer running"
