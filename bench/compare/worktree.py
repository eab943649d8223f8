"""The base of a compare: its commit, and its code in a temporary `git worktree`, removed however a compare ends."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from bench.core.interrupt import Interrupted, deferred_signals
from cosmos3.errors import InputError


def git(repo: Path, *args: str, what: str) -> str:
    """Run git in `repo`; InputError naming `what` with git's own message when it fails."""
    try:
        out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=False)
    except OSError as exc:
        raise InputError(what, f"needs git ({exc})") from None
    if out.returncode != 0:
        raise InputError(what, f"git {' '.join(args[:2])} failed: {out.stderr.strip() or out.stdout.strip()}")
    return out.stdout.strip()


def resolve_ref(repo: Path, ref: str) -> str:
    try:
        return git(repo, "rev-parse", "--verify", "--quiet", "--end-of-options", f"{ref}^{{commit}}",
                   what=f"base {ref}")
    except InputError:
        raise InputError(f"base {ref}", f"is not a commit in {repo} (an unknown ref?)") from None


def head_state(repo: Path) -> tuple[str, bool]:
    """The working tree's commit and whether its tracked files differ from it (as run records say)."""
    commit = git(repo, "rev-parse", "HEAD", what="head")
    status = git(repo, "status", "--porcelain", "--untracked-files=no", what="head")
    return commit, bool(status)


@contextlib.contextmanager
def base_worktree(repo: Path, ref: str, commit: str, scratch: Path) -> Iterator[Path]:
    """`git worktree add --detach` of the base commit; removed (--force, then prune) however the block ends."""
    tree = scratch / "base"
    try:
        git(repo, "worktree", "add", "--detach", "--quiet", str(tree), commit, what=f"base {ref}")
        print(f"base {ref} ({commit[:12]}) checked out at {tree}", flush=True)
        yield tree
    finally:
        with deferred_signals() as pending:
            remove_worktree(repo, tree)
        if pending:
            raise Interrupted(pending[0])


def remove_worktree(repo: Path, tree: Path) -> None:
    """Remove the worktree and git's record of it; say so loudly where that fails (never silently)."""
    problems = []
    if tree.exists():
        out = subprocess.run(["git", "-C", str(repo), "worktree", "remove", "--force", str(tree)],
                             capture_output=True, text=True, check=False)
        if out.returncode != 0:
            problems.append(out.stderr.strip())
    if tree.exists():  # not (yet) a registered worktree: stopped while `worktree add` ran
        shutil.rmtree(tree, ignore_errors=True)
    out = subprocess.run(["git", "-C", str(repo), "worktree", "prune"], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        problems.append(out.stderr.strip())
    if tree.exists() or problems:
        print(f"warning: the base worktree {tree} may remain ({'; '.join(problems)}); "
              "remove it with `git worktree remove --force` and `git worktree prune`", file=sys.stderr)


def check_package(tree: Path, ref: str) -> None:
    if not (tree / "cosmos3" / "__init__.py").is_file():
        raise InputError(f"base {ref}", "has no cosmos3 package (cosmos3/__init__.py) to compare with")
