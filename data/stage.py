"""What every stage script shares: the data root, --force/--debug, one-line errors people can act on, a lock
per stage and --data, and SLURM-array shards."""
import argparse
import contextlib
import errno
import fcntl
import os
import re
import signal
import stat
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from data.files import link_out_of, remove_dead_writers_temps

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO_ROOT / "data"
RESULTS_DIR = "results"


class InputError(Exception):
    """Bad input the user can fix. The message is one line: the file (and row), the rule broken, the fix."""


class LockHeld(Exception):
    """Another live process holds the lock."""


class Terminated(BaseException):
    """SIGTERM (a SLURM time limit, scancel, kill): unwinds like Ctrl-C so temp files are cleaned up."""


class StageArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad command line is one 'error: ' line (argparse's default prints the usage first)."""

    def error(self, message):
        self.exit(2, f"error: command line: {' '.join(message.split())} — see {self.prog} --help\n")


def first_paragraph(text: str) -> str:
    """A docstring's first paragraph on one line: a stage's --help description, never cut mid-sentence."""
    lines = []
    for line in text.strip().splitlines():
        if not line.strip():
            break
        lines.append(line.strip())
    return " ".join(lines)


def stage_parser(description: str) -> argparse.ArgumentParser:
    """The stage's parser; `description` may be the module docstring (its first paragraph is used)."""
    parser = StageArgumentParser(description=first_paragraph(description),
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="artifact root; every stage reads and writes below it (see data/ARTIFACTS.md)")
    parser.add_argument("--force", action="store_true", help="redo work whose outputs already exist")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    return parser


# ---- locks ------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def file_lock(path, blocking: bool = True):
    """An advisory fcntl lock on `path`, released by the OS when the process dies (kill -9 included).

    The file is removed on release, so a finished run leaves nothing behind; a waiter that locked a file
    which was removed meanwhile notices (the inode at `path` changed) and tries again. blocking=False raises
    LockHeld at once when another process holds it. The lock file is opened without following a symlink and must
    be a plain file with no other name (InputError otherwise): a link planted at `path` in a shared folder would
    otherwise make the run truncate and overwrite its target with the pid.
    """
    path = Path(path)
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
        except OSError as error:
            if error.errno != errno.ELOOP:
                raise
            raise InputError(f"{path}: the lock file is a symbolic link — remove it (a stage creates its own lock "
                             "file; a link there points the lock at another file)") from None
        try:
            status = os.fstat(fd)
            if not stat.S_ISREG(status.st_mode) or status.st_nlink > 1:
                raise InputError(f"{path}: the lock file is not a plain file of its own (a hard link or a special "
                                 "file) — remove it; a stage creates its own lock file")
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise LockHeld(holder) from None
        except BaseException:
            os.close(fd)
            raise
        try:
            current = os.lstat(path).st_ino
        except FileNotFoundError:
            current = None
        if current == os.fstat(fd).st_ino:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        # Unlink while still holding it: a process that opens the name from now on gets a fresh file.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)


def _read_holder(fd: int) -> str:
    try:
        return os.pread(fd, 32, 0).decode().strip() or "?"
    except (OSError, UnicodeDecodeError):
        return "?"


def lock_path(data, name: str) -> Path:
    """<data>/.<name>.lock, the name reduced to characters safe in a file name."""
    return Path(data) / f".{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}.lock"


# ---- shards -----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Shard:
    index: int
    count: int

    def select(self, items: Sequence) -> list:
        """Item k of the sorted items belongs to shard k mod n: disjoint, covering, independent of input order."""
        return [item for position, item in enumerate(sorted(items)) if position % self.count == self.index]

    def owns(self, position: int) -> bool:
        return position % self.count == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(spec: str | None, environ=None) -> Shard:
    """'i/n' with 0 <= i < n; without one, a SLURM array task's position in its array, else the whole set."""
    environ = os.environ if environ is None else environ
    origin = "--shard"
    if spec is None:
        task, count = environ.get("SLURM_ARRAY_TASK_ID"), environ.get("SLURM_ARRAY_TASK_COUNT")
        if task is None or count is None:
            return Shard(0, 1)
        try:
            # Array ids need not start at 0 (--array=1-8): the shard is the task's position in the array.
            index = int(task) - int(environ.get("SLURM_ARRAY_TASK_MIN", "0"))
            spec = f"{index}/{int(count)}"
        except ValueError:
            spec = f"{task}/{count}"
        origin = "SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT (minus SLURM_ARRAY_TASK_MIN)"
    parts = str(spec).split("/")
    try:
        index, count = (int(part) for part in parts) if len(parts) == 2 else (None, None)
    except ValueError:
        index, count = None, None
    if index is None or count < 1 or not 0 <= index < count:
        raise InputError(f"{origin} {spec!r} is not a shard 'i/n' with 0 <= i < n — pass e.g. --shard 0/4")
    return Shard(index, count)


def add_progress_argument(parser) -> None:
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bars (e.g. for a batch job's log file)")


def add_shard_argument(parser) -> None:
    parser.add_argument("--shard", default=None,
                        help="i/n: do only shard i of n (0-based), e.g. one task of a SLURM array "
                             "(unset: from SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT, else everything)")


# ---- running a stage --------------------------------------------------------------------------------------

def _os_error_line(error: OSError) -> str:
    where = error.filename if error.filename is not None else "the data directory"
    reason = error.strerror or str(error)
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        reason = f"the disk is full ({reason})" if error.errno == errno.ENOSPC else f"over the disk quota ({reason})"
    fixes = {errno.ENOSPC: "free some space or use another --data",
             errno.EDQUOT: "free some quota or use another --data",
             errno.EACCES: "check the permissions of --data (or use another --data)",
             errno.EPERM: "check the permissions of --data (or use another --data)",
             errno.EROFS: "the file system is read-only: use another --data",
             errno.ENOTDIR: "a path component is a file where a directory is expected: fix --data"}
    return f"{where}: {reason} — {fixes.get(error.errno, 'check the path and the disk, then rerun to resume')}"


def one_line(message: str) -> str:
    """The promise is one line: a newline that came from the data (an id, a path) is shown escaped."""
    return message.replace("\r", "\\r").replace("\n", "\\n")


def run_stage(main, parser: argparse.ArgumentParser, argv=None, lock=None) -> int:
    """Parse args and call main(args) holding the stage's lock on --data.

    InputError and operating-system faults (not a directory, permission, read-only, disk full) -> one line
    'error: ...' on stderr and exit 2, no traceback (unless --debug). `lock` names the lock: a string, or a
    function of the parsed args (stages that shard lock per shard); default: the stage script's name. A second run
    holding the same lock on the same --data stops at once with one line (exit 2). SIGTERM unwinds like Ctrl-C.
    """
    args = parser.parse_args(argv)
    debug = getattr(args, "debug", False)
    previous_handler = _catch_sigterm()
    data = getattr(args, "data", None)
    created = []
    try:
        if data is not None:
            data = Path(data)
            if data.exists() and not data.is_dir():
                raise InputError(f"--data {data}: is not a directory — pass the artifact directory "
                                 "(it is created when missing)")
            # Results are written inside --data only, and --force clears folders under results/ (the commitment
            # search's): a link out of --data there would make a stage write, and delete, elsewhere. Checked here,
            # once, for every stage that writes results.
            outside = link_out_of(data / RESULTS_DIR, data)
            if outside is not None:
                raise InputError(f"{data / RESULTS_DIR}: is a symbolic link to {outside}, outside --data {data} — "
                                 "results are written inside --data only: remove the link (move the folder it "
                                 "points to into --data)")
            created = [folder for folder in (data, *data.parents) if not folder.exists()]
            data.mkdir(parents=True, exist_ok=True)
            name = lock(args) if callable(lock) else (lock or _stage_name(main, parser))
            path = lock_path(data, name)
            try:
                held = file_lock(path, blocking=False)
                held.__enter__()
            except LockHeld as holder:
                raise InputError(f"{path}: another run (pid {holder}) of this stage is using --data {data} — "
                                 "wait for it to finish, or use another --data") from None
            try:
                # Temp files of writers killed before their rename, anywhere under --data (a kill cannot clean
                # up after itself); those of live runs and of other hosts are kept.
                remove_dead_writers_temps(data)
                main(args)
            finally:
                held.__exit__(None, None, None)
        else:
            main(args)
    except InputError as error:
        if debug:
            traceback.print_exc()
        print(f"error: {one_line(str(error))}", file=sys.stderr)
        return 2
    except OSError as error:
        if debug:
            traceback.print_exc()
        print(f"error: {one_line(_os_error_line(error))}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, Terminated) as stop:
        print("interrupted: finished units are kept; rerun the same command to resume", file=sys.stderr)
        return 143 if isinstance(stop, Terminated) else 130
    finally:
        _restore_sigterm(previous_handler)
        # A run that made nothing leaves no empty directories behind (innermost first; a full one stays).
        for folder in created:
            with contextlib.suppress(OSError):
                folder.rmdir()
    return 0


def _stage_name(main, parser) -> str:
    """The stage script's name, whether it runs as a script (__main__) or is called in-process."""
    module = getattr(main, "__module__", "__main__") or "__main__"
    return Path(parser.prog).stem if module == "__main__" else module.rsplit(".", 1)[-1]


def _catch_sigterm():
    def terminate(signum, frame):
        raise Terminated()
    try:
        return signal.signal(signal.SIGTERM, terminate)
    except ValueError:  # not the main thread: leave signals alone
        return None


def _restore_sigterm(previous) -> None:
    if previous is not None:
        signal.signal(signal.SIGTERM, previous)


def main_exit(main, parser, argv=None, lock=None) -> None:
    sys.exit(run_stage(main, parser, argv, lock=lock))
