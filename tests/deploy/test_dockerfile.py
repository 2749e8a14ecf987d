"""deploy/Dockerfile copies only files that exist and that its .dockerignore lets into the context."""

from __future__ import annotations

import re

from deploy_files import DEPLOY, ROOT


def copied_sources() -> list[str]:
    text = (DEPLOY / "Dockerfile").read_text()
    sources = []
    for line in re.findall(r"^COPY\s+(.+)$", text, flags=re.MULTILINE):
        words = [w for w in line.split() if not w.startswith("--")]
        sources += words[:-1]  # the last word is the destination
    return sources


def admitted(path: str, ignore: str) -> bool:
    """Whether ``path`` passes a '*' + '!keep' .dockerignore (the only style ours uses)."""
    keep = [line[1:].rstrip("/") for line in ignore.splitlines() if line.startswith("!")]
    return any(path == k or path.startswith(k + "/") for k in keep)


def test_every_copied_file_exists_and_enters_the_build_context() -> None:
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text()
    lines = ignore.splitlines()  # everything out, then what the build needs back in
    assert lines.index("*") < min(i for i, line in enumerate(lines) if line.startswith("!"))
    sources = copied_sources()
    assert {"pyproject.toml", "veil", "deploy/healthcheck.py"} <= set(sources)
    for source in sources:
        assert (ROOT / source).exists(), source
        assert admitted(source, ignore), f"{source} is excluded by Dockerfile.dockerignore"
    assert not admitted("deploy/local/api.env", ignore) and not admitted(".venv/bin/python", ignore)
