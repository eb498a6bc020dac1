"""Commit pvcheck's own machine-docs files, so the loop that reads the docs repo by commit
sees each claim, review and DONE.

Only when `docs.commit = true` and the folder is inside a git work tree. Only the files
pvcheck writes are added; an index already holding someone else's staged change is left
alone (nothing is committed); hooks run (never `--no-verify`) from the repository's hooks
folder only. As root, the work tree, its git folders, every hook and every config file git
reads must be root's alone, and git gets root's own home, never the caller's. Nothing is
pushed unless `docs.push = true`. A commit that fails is reported; the files stay written.
"""

from __future__ import annotations

import os
import pwd
import re
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
        # The account's own home, never one from the environment (`sudo -E` keeps a user's
        # HOME, and with it their ~/.gitconfig).
        "HOME": pwd.getpwuid(os.geteuid()).pw_dir,
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_AUTHOR_NAME": name,
        "GIT_AUTHOR_EMAIL": email.rstrip(">"),
        "GIT_COMMITTER_NAME": name,
        "GIT_COMMITTER_EMAIL": email.rstrip(">"),
    }
    if "SSH_AUTH_SOCK" in os.environ:  # a push over ssh uses the operator's agent
        env["SSH_AUTH_SOCK"] = os.environ["SSH_AUTH_SOCK"]
    return env


def _run(argv: list[str], env: dict[str, str]) -> Finished:
    return run_bounded(argv, GIT_TIMEOUT_S, env=env, max_stdout=1 << 20)


def _said(done: Finished) -> str:
    text = (done.stderr or done.stdout).decode("utf-8", errors="replace").strip()
    if done.rc is None:
        return f"no answer within {GIT_TIMEOUT_S:g}s"
    return redact(text.splitlines()[-1] if text else f"exit {done.rc}")[:300]


@dataclass(frozen=True)
class Repo:
    top: Path  # the work tree
    git_dir: Path  # this work tree's git folder (a linked worktree has its own)
    common: Path  # the folder holding hooks/ and the shared config


_ORIGIN = re.compile(r"^file:(.+?)\t", re.M)


def unsafe_repo(repo: Repo, config_origins: list[str]) -> str | None:
    """As root, why a commit there could run someone else's code or land elsewhere: the work
    tree, its `.git`, the git folders, every hook and every config file git reads must be
    changeable by root alone. None: safe (or not running as root)."""
    if os.geteuid() != 0:
        return None
    hooks = repo.common / "hooks"
    paths = [repo.top, repo.top / ".git", repo.git_dir, repo.common, hooks]
    paths += sorted(hooks.iterdir()) if hooks.is_dir() else []
    paths += [repo.top / origin for origin in config_origins]  # relative ones: to the top
    for path in paths:
        why = writable_by_others(path)
        if why:
            return f"{path} is {why}: git would run or read it as root"
    return None


def commit_docs(docs: DocsConfig, message: str) -> Committed | None:
    """Commit pvcheck's files in the docs folder; None when commits are not configured."""
    if not docs.commit:
        return None
    env = _env(docs.author)
    folder = docs.paths.folder
    where = _run(
        ["git", "-C", str(folder), "rev-parse", "--path-format=absolute", "--show-toplevel",
         "--absolute-git-dir", "--git-common-dir"],
        env,
    )  # fmt: skip
    if where.rc != 0:
        return Committed(False, f"{folder} is not inside a git work tree ({_said(where)})")
    top_text, git_dir_text, common_text = where.stdout.decode().splitlines()[:3]
    top, git_dir = Path(top_text), Path(git_dir_text)
    repo = Repo(top, git_dir, Path(common_text))
    origins = _run(["git", "-C", str(top), "config", "--show-origin", "--list"], env)
    unsafe = unsafe_repo(repo, _ORIGIN.findall(origins.stdout.decode("utf-8", "replace")))
    if unsafe:
        return Committed(False, unsafe)
    # Hooks run, from the repository's own (checked) hooks folder, whatever the config says;
    # no fsmonitor program is started.
    git = ["git", "-C", str(top), "-c", f"core.hooksPath={repo.common / 'hooks'}",
           "-c", "core.fsmonitor=false"]  # fmt: skip

    def run(*args: str) -> Finished:
        return _run([*git, *args], env)

    # git names the work tree by its real path; the docs folder may be reached by a link.
    ours = [str(p.resolve().relative_to(top)) for p in docs.paths.owned if p.exists()]
    staged = run("diff", "--cached", "--name-only", "-z")
    if staged.rc != 0:
        return Committed(False, f"git diff --cached: {_said(staged)}")
    others = sorted(set(staged.stdout.decode().split("\0")) - set(ours) - {""})
    if others:
        return Committed(False, "the index holds others' staged changes: " + ", ".join(others[:5]))
    for step in (["add", "--", *ours], ["commit", "-q", "-m", message, "--", *ours]):
        if step[0] == "commit" and run("diff", "--cached", "--quiet", "--", *ours).rc == 0:
            return Committed(True, "nothing to commit")
        done = run(*step)
        if done.rc != 0:
            # Unstaged again: a person's next `git commit` must not take them unknowingly.
            run("reset", "-q", "--", *ours)
            return Committed(False, f"git {step[0]} refused: {_said(done)}")
    detail = run("log", "-1", "--format=%h %s").stdout.decode("utf-8", errors="replace").strip()
    if docs.push:
        pushed = run("push", "-q")
        if pushed.rc != 0:
            return Committed(False, f"committed {detail}; git push refused: {_said(pushed)}")
        detail += " (pushed)"
    return Committed(True, detail)
