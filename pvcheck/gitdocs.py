"""Commit pvcheck's own machine-docs files, so the loop that reads the docs repo by commit
sees each claim, review and DONE.

Only when `docs.commit = true` and the folder is inside a git work tree. Only the files
pvcheck writes are added; an index already holding someone else's staged change is left
alone (nothing is committed); hooks run (never `--no-verify`), and as root only from a
git folder root alone can change; nothing is pushed unless `docs.push = true`. A commit that
fails is reported; the files stay written.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pvcheck.config import DocsConfig
from pvcheck.masking import redact
from pvcheck.procs import PLAIN_ENV, Finished, run_bounded
from pvcheck.safeio import writable_by_others

GIT_TIMEOUT_S = 60.0  # a hook gets this long too


@dataclass(frozen=True)
class Committed:
    ok: bool
    detail: str  # "<sha> <subject>", "nothing to commit", or why it was not committed

    def __str__(self) -> str:
        return self.detail if self.ok else f"not committed: {self.detail}"


def _env(author: str) -> dict[str, str]:
    name, _, email = author.rpartition(" <")
    env = {
        **PLAIN_ENV,
        "HOME": os.environ.get("HOME", "/root"),
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_AUTHOR_NAME": name,
        "GIT_AUTHOR_EMAIL": email.rstrip(">"),
        "GIT_COMMITTER_NAME": name,
        "GIT_COMMITTER_EMAIL": email.rstrip(">"),
    }
    if "SSH_AUTH_SOCK" in os.environ:  # a push over ssh uses the operator's agent
        env["SSH_AUTH_SOCK"] = os.environ["SSH_AUTH_SOCK"]
    return env


def _git(top: Path, env: dict[str, str], *args: str) -> Finished:
    return run_bounded(["git", "-C", str(top), *args], GIT_TIMEOUT_S, env=env, max_stdout=1 << 20)


def _said(done: Finished) -> str:
    text = (done.stderr or done.stdout).decode("utf-8", errors="replace").strip()
    if done.rc is None:
        return f"no answer within {GIT_TIMEOUT_S:g}s"
    return redact(text.splitlines()[-1] if text else f"exit {done.rc}")[:300]


def unsafe_git_dir(git_dir: Path) -> str | None:
    """As root, why the repository's hooks or config could be someone else's code."""
    if os.geteuid() != 0:
        return None
    for path in (git_dir, git_dir / "hooks", git_dir / "config"):
        why = writable_by_others(path)
        if why:
            return f"{path} is {why}: its hooks would run as root"
    return None


def commit_docs(docs: DocsConfig, message: str) -> Committed | None:
    """Commit pvcheck's files in the docs folder; None when commits are not configured."""
    if not docs.commit:
        return None
    env = _env(docs.author)
    folder = docs.paths.folder
    where = run_bounded(
        ["git", "-C", str(folder), "rev-parse", "--show-toplevel", "--absolute-git-dir"],
        GIT_TIMEOUT_S,
        env=env,
    )
    if where.rc != 0:
        return Committed(False, f"{folder} is not inside a git work tree ({_said(where)})")
    top_text, git_dir_text = where.stdout.decode().splitlines()[:2]
    top, git_dir = Path(top_text), Path(git_dir_text)
    unsafe = unsafe_git_dir(git_dir)
    if unsafe:
        return Committed(False, unsafe)
    # git names the work tree by its real path; the docs folder may be reached by a link.
    ours = [str(p.resolve().relative_to(top)) for p in docs.paths.owned if p.exists()]
    staged = _git(top, env, "diff", "--cached", "--name-only", "-z")
    if staged.rc != 0:
        return Committed(False, f"git diff --cached: {_said(staged)}")
    others = sorted(set(staged.stdout.decode().split("\0")) - set(ours) - {""})
    if others:
        return Committed(False, "the index holds others' staged changes: " + ", ".join(others[:5]))
    for step in (["add", "--", *ours], ["commit", "-q", "-m", message, "--", *ours]):
        if step[0] == "commit":
            unchanged = _git(top, env, "diff", "--cached", "--quiet", "--", *ours)
            if unchanged.rc == 0:
                return Committed(True, "nothing to commit")
        done = _git(top, env, *step)
        if done.rc != 0:
            # Unstaged again: a person's next `git commit` must not take them unknowingly.
            _git(top, env, "reset", "-q", "--", *ours)
            return Committed(False, f"git {step[0]} refused: {_said(done)}")
    head = _git(top, env, "log", "-1", "--format=%h %s")
    detail = head.stdout.decode("utf-8", errors="replace").strip()
    if docs.push:
        pushed = _git(top, env, "push", "-q")
        if pushed.rc != 0:
            return Committed(False, f"committed {detail}; git push refused: {_said(pushed)}")
        detail += " (pushed)"
    return Committed(True, detail)
