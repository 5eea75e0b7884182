"""The documentation: it builds with warnings as errors, its reference pages match the code, its links resolve,
and the getting-started walkthrough (a second machine's client joining a TLS server) works as written."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fedsqueeze.apps.cli import build_parser

from conftest import free_port, wait_for

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
# not --quiet: it hides warnings from strict mode too, and the build would pass with broken links
MKDOCS = [sys.executable, "-m", "mkdocs", "build", "--strict"]


def mkdocs_build(config: Path, site: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MKDOCS, "--config-file", str(config), "--site-dir", str(site)], capture_output=True,
                          text=True, cwd=ROOT, timeout=300)


def test_the_docs_build_with_warnings_as_errors(tmp_path: Path) -> None:
    result = mkdocs_build(ROOT / "mkdocs.yml", tmp_path / "site")
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "site" / "reference" / "configuration" / "index.html").exists()
    python_api = (tmp_path / "site" / "reference" / "python" / "index.html").read_text()
    assert "run_server" in python_api and "MethodParams" in python_api   # mkdocstrings read the docstrings


def test_a_broken_link_fails_the_docs_build(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    shutil.copytree(DOCS, docs)
    with (docs / "concepts" / "codecs.md").open("a") as page:
        page.write("\nSee [a page that does not exist](../nowhere.md).\n")
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    config["docs_dir"] = str(docs)
    config["hooks"] = [str(ROOT / h) for h in config["hooks"]]
    config["plugins"][1]["mkdocstrings"]["handlers"]["python"]["paths"] = [str(ROOT / "build" / "api-src")]
    (tmp_path / "mkdocs.yml").write_text(yaml.safe_dump(config))
    result = mkdocs_build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert result.returncode != 0 and "nowhere.md" in result.stdout + result.stderr


def test_the_reference_pages_match_the_code() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_reference.py"), "--check"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("command", ["server", "client", "simulate", "loadgen"])
def test_every_flag_is_in_the_configuration_reference(command: str) -> None:
    page = (DOCS / "reference" / "configuration.md").read_text()
    section = page.split(f"## fedsqueeze {command}\n", 1)[1].split("\n## ", 1)[0]
    subparsers = next(a for a in build_parser()._actions if a.dest == "command")
    flags = {flag for action in subparsers.choices[command]._actions for flag in action.option_strings
             if flag not in ("-h", "--help") and not flag.startswith("--no-")}
    assert len(flags) > 5
    missing = sorted(flag for flag in flags if f"`{flag}`" not in section)
    assert not missing, f"fedsqueeze {command} flags missing from docs/reference/configuration.md: {missing}"


def test_the_readme_is_short_and_its_links_resolve() -> None:
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    targets = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text)
    assert targets
    broken = [t for t in targets if not t.startswith("http") and not (ROOT / t).exists()]
    assert not broken, broken


def walkthrough(section: str) -> list[str]:
    """The shell commands of a getting-started section, continuation lines joined, comments dropped."""
    page = (DOCS / "getting-started.md").read_text()
    body = page.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", body, re.S):
        commands += [c.strip() for c in block.replace("\\\n", " ").splitlines() if c.strip()]
    return commands


@pytest.mark.slow
def test_the_two_machine_walkthrough_works_as_written(tmp_path: Path) -> None:
    """Run the docs' TLS walkthrough on loopback: the server's host name becomes 127.0.0.1, ``scp`` a copy into
    the client's own folder, set-up steps are skipped (this venv is set up), one round instead of five, and the
    laptop trains on a tenth of the train split (``--num-partitions 10``: the round is the walkthrough's, not
    a full epoch of Fashion-MNIST)."""
    port = free_port()
    server_dir, client_dir = tmp_path / "server", tmp_path / "laptop"
    server_dir.mkdir()
    client_dir.mkdir()
    bin_dir = Path(sys.executable).parent

    def argv(command: str) -> list[str]:
        command = command.replace("fl.example.org", "127.0.0.1").replace("50051", str(port))
        command = command.replace("--rounds 5", "--rounds 1 --linger 30")
        words = shlex.split(command)
        assert words[0] == "fedsqueeze", command
        return [str(bin_dir / "fedsqueeze"), *words[1:]]

    commands = walkthrough("Two machines, with TLS")
    setup = [c for c in commands if c == "bash scripts/setup.sh run && source .venv/bin/activate"]
    assert len(setup) == 2   # once per machine; this venv is already set up
    commands = [c for c in commands if c not in setup]
    certs, server, scp, client, status = commands
    assert certs.startswith("fedsqueeze certs") and scp.startswith("scp") and status.startswith("fedsqueeze status")
    made = subprocess.run(argv(certs), cwd=server_dir, capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    for name in shlex.split(scp)[1:-1]:        # scp creds/ca.pem creds/laptop.token laptop:fedsqueeze/
        shutil.copy(server_dir / name, client_dir)
    server_log = (tmp_path / "server.log").open("w")
    serving = subprocess.Popen(argv(server), cwd=server_dir, stdout=server_log, stderr=subprocess.STDOUT)
    try:
        joined = subprocess.Popen([*argv(client), "--num-partitions", "10"], cwd=client_dir, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)

        def watched() -> str | None:
            shown = subprocess.run(argv(status), cwd=server_dir, capture_output=True, text=True, timeout=60)
            return shown.stdout if shown.returncode == 0 and re.search(r"clients\s+1 connected", shown.stdout) else None
        wait_for(watched, 120, "the operator's status to show the laptop connected", interval=1.0)
        output, _ = joined.communicate(timeout=600)
        assert joined.returncode == 0, output[-3000:]
        assert serving.wait(timeout=120) == 0, (tmp_path / "server.log").read_text()[-3000:]
    finally:
        for proc in (serving, joined):
            if proc.poll() is None:
                proc.kill()
    log = (tmp_path / "server.log").read_text()
    assert "client laptop joined" in log and "round 1 done" in log
    assert (server_dir / "runs" / "server" / "report.json").exists()
