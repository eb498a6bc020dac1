"""Commit pvcheck's own machine-docs files, so the loop that reads the docs repo by commit
sees each claim, review and DONE.

Only when `docs.commit = true` and the folder is inside a git work tree. Only the files
pvcheck writes are added; an index already holding someone else's staged change is left
alone (nothing is committed); hooks run (never `--no-verify`) from the repository's hooks
folder only. As root, the work tree, its git folders, every hook, every config file git
reads and every file those include must be root's alone, and git gets root's own home, never
the caller's. Nothing is pushed unless `docs.push = true`. A commit that fails is reported;
the files stay written.
"""

from __future__ import annotations

import os
import pwd
import stat
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


@dataclass(frozen=True)
class Entry:
    file: Path | None  # the config file holding it (None: not from a file)
    key: str
    value: str


MAX_CONFIG_FILES = 32  # config files followed through includes (git stops at depth 10)


def _config(folder: Path, env: dict[str, str], file: Path | None = None) -> list[Entry] | str:
    """Each entry `git config --list` shows there (of one file, when given), includes not
    followed (git would open their targets: a FIFO blocks it, or answers nothing now and
    something else to the commit); `--no-pager`, or git reads its early config following
    them. Or why it cannot be read."""
    only = ["--file", str(file)] if file is not None else []
    done = _run(
        ["git", "--no-pager", "-C", str(folder), "config", *only, "--list", "--show-origin",
         "--no-includes", "-z"],
        env,
    )  # fmt: skip
    if done.rc != 0 or done.truncated:
        return f"git config --list{' --file ' + str(file) if file else ''}: {_said(done)}"
    fields = done.stdout.decode("utf-8", "replace").split("\0")[:-1]
    entries = []
    for origin, key_value in zip(fields[::2], fields[1::2], strict=False):
        key, _, value = key_value.partition("\n")
        name = origin.removeprefix("file:") if origin.startswith("file:") else None
        if name is None:
            entries.append(Entry(None, key, value))
            continue
        # git names a repository's config relative to the work tree it found (an ancestor),
        # unknown before it is checked: every ancestor holding that file is taken.
        here = Path(os.path.abspath(folder))
        bases = [here, *here.parents] if not os.path.isabs(name) else [Path("/")]
        found = [base / name for base in bases if os.path.lexists(base / name)]
        entries += [Entry(path, key, value) for path in found or [here / name]]
    return entries


def _include_target(entry: Entry, home: str) -> Path | None:
    """The file an include names, resolved as git resolves it: `~/` is the home git runs
    with, a relative path is relative to the folder of the file holding it. None for a form
    pvcheck does not follow (`~user/`, `%(prefix)/`, an include from outside a file)."""
    value = entry.value
    if entry.file is None or value.startswith(("%(", ":(")):
        return None
    if value == "~" or value.startswith("~/"):
        return Path(home + value[1:])
    if value.startswith("~"):
        return None
    return entry.file.parent / value


def unsafe_config(folder: Path, env: dict[str, str]) -> str | None:
    """As root, why the config git reads in `folder` could be someone else's: every config
    file, and every `include.path` and `includeIf.<condition>.path` target (whatever the
    condition: it may hold later), followed to any depth, must be root's alone in folders
    only root can change (so a missing one only root can make), and a regular file when it
    exists (only stat()ed here: a FIFO is never opened). Checked before any other git command
    runs there: each of them reads the config, following its includes."""
    if os.geteuid() != 0:
        return None
    todo = _config(folder, env)
    if isinstance(todo, str):
        return todo
    checked: set[Path] = set()
    while todo:
        entry = todo.pop(0)
        if entry.file is not None and entry.file not in checked:
            checked.add(entry.file)
            why = writable_by_others(entry.file)
            if why:
                return f"{entry.file} is {why}: git would read it as root"
        section, _, rest = entry.key.lower().partition(".")
        if section not in ("include", "includeif") or rest.rsplit(".", 1)[-1] != "path":
            continue
        where = f"{entry.file or 'the command line'}: {entry.key} = {entry.value}"
        target = _include_target(entry, env["HOME"])
        if target is None:
            return f"{where}: pvcheck does not follow this form of include; refused"
        why = writable_by_others(target)
        if why:
            return f"{where}: {target} is {why}: git would read it as root"
        try:
            info = os.stat(target)
        except (FileNotFoundError, NotADirectoryError):
            continue  # git skips a missing include; only root could make it (checked above)
        if not stat.S_ISREG(info.st_mode):
            return f"{where}: {target} is not a regular file: git would read it as root"
        if target in checked:
            continue
        if len(checked) > MAX_CONFIG_FILES:
            return f"{where}: more than {MAX_CONFIG_FILES} config files included; refused"
        more = _config(folder, env, target)  # named as git names it, for its own includes
        if isinstance(more, str):
            return more
        todo += more
    return None


def unsafe_repo(repo: Repo, env: dict[str, str]) -> str | None:
    """As root, why a commit there could run someone else's code or land elsewhere: the work
    tree, its `.git`, the git folders, every hook, every config file git reads or would read,
    and every file those include must be changeable by root alone. None: safe (or not
    running as root)."""
    if os.geteuid() != 0:
        return None
    hooks = repo.common / "hooks"
    paths = [repo.top, repo.top / ".git", repo.git_dir, repo.common, hooks]
    paths += sorted(hooks.iterdir()) if hooks.is_dir() else []
    # Where git looks for config (with the home _env gives it), present or not: a missing
    # one must be one only root could make.
    home = Path(env["HOME"])
    paths += [Path("/etc/gitconfig"), home / ".gitconfig", home / ".config" / "git" / "config"]
    paths += [repo.common / "config", repo.git_dir / "config.worktree"]
    for path in paths:
        why = writable_by_others(path)
        if why:
            return f"{path} is {why}: git would run or read it as root"
    return unsafe_config(repo.top, env)


def commit_docs(docs: DocsConfig, message: str) -> Committed | None:
    """Commit pvcheck's files in the docs folder; None when commits are not configured."""
    if not docs.commit:
        return None
    env = _env(docs.author)
    folder = docs.paths.folder
    unsafe = unsafe_config(folder, env)  # before `rev-parse`, which reads it all
    if unsafe:
        return Committed(False, unsafe)
    where = _run(
        ["git", "--no-pager", "-C", str(folder), "rev-parse", "--path-format=absolute",
         "--show-toplevel", "--absolute-git-dir", "--git-common-dir"],
        env,
    )  # fmt: skip
    if where.rc != 0:
        return Committed(False, f"{folder} is not inside a git work tree ({_said(where)})")
    top_text, git_dir_text, common_text = where.stdout.decode().splitlines()[:3]
    top, git_dir = Path(top_text), Path(git_dir_text)
    repo = Repo(top, git_dir, Path(common_text))
    unsafe = unsafe_repo(repo, env)
    if unsafe:
        return Committed(False, unsafe)
    # Hooks run, from the repository's own (checked) hooks folder, whatever the config says;
    # no fsmonitor program is started.
    git = ["git", "--no-pager", "-C", str(top), "-c", f"core.hooksPath={repo.common / 'hooks'}",
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
