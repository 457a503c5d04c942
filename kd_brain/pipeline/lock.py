"""One run per experiment folder: a lock file naming its owner (PID and host).

``run.py`` and every stage script take ``<folder>/.lock`` before they write
into an experiment folder; a second run on a folder in use is refused with
:class:`FolderInUseError`, which names the owner. Rules:

* **Held** means an ``fcntl.flock`` on the file by a live process: the
  kernel drops it when its owner dies, however it dies (``SIGKILL``
  included), so a lock file whose owner is gone is **stale**: the next run
  takes it over and logs the dead owner's PID and host. Where ``flock`` is
  unsupported, the owner's PID is checked on this host instead.
* **Children pass**: a process whose ancestor (or itself) holds the lock
  goes on without taking it, so ``run.py``'s stage subprocesses, and
  ``torchrun``'s ranks under it, write into the folder ``run.py`` locked.
  Ancestry comes from ``/proc``; elsewhere from the environment variable
  ``KD_NOISE_LOCK_OWNER``, which the owner sets for its children.
* **One process per torchrun job**: ranks other than 0 (``RANK`` set and not
  0) never take a lock; rank 0 takes it for the job.
* A lock file naming **another host** is refused whether or not it could be
  locked (a network file system may not share locks between hosts): delete
  it by hand if that run is gone; the error says so.

Example
-------
>>> import tempfile
>>> d = tempfile.mkdtemp()
>>> with experiment_lock(d) as lock:
...     lock.owner()["pid"] == os.getpid()
True
>>> os.path.exists(os.path.join(d, LOCK_FILE))  # released: removed
False
"""

import contextlib
import errno
import functools
import json
import logging
import os
import socket
import sys
import time

try:
    import fcntl
except ImportError:  # not POSIX: PID checks only
    fcntl = None

logger = logging.getLogger(__name__)
LOCK_FILE = ".lock"
ENV = "KD_NOISE_LOCK_OWNER"  # "<pid>@<host>[,...]" of the locks held by this process's ancestors


class FolderInUseError(RuntimeError):
    """Another run holds the experiment folder's lock; the message names it."""


def _ancestors(pid):
    """PIDs above ``pid`` (from ``/proc``; empty where there is none)."""
    out = []
    while pid > 1:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                pid = int(f.read().rsplit(b")", 1)[1].split()[1])  # field 4, after the (command)
        except (OSError, ValueError, IndexError):
            break
        out.append(pid)
    return out


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_ours(owner):
    """The owner is this process or an ancestor of it (on this host)."""
    if owner.get("host") != socket.gethostname():
        return False
    pid = owner.get("pid")
    env = os.environ.get(ENV, "").split(",")
    return pid == os.getpid() or pid in _ancestors(os.getpid()) or f"{pid}@{owner['host']}" in env


class ExperimentLock:
    """The lock of one experiment folder (see the module docstring).

    Arguments
    ---------
    folder : str
        The experiment folder (created if missing).
    what : str
        Who takes it, for the lock file and the messages (default: the command line).
    """

    def __init__(self, folder, what=None):
        self.folder = folder
        self.path = os.path.join(folder, LOCK_FILE)
        self.what = what or " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))
        self.fd, self.nested, self._env = None, False, None

    def owner(self):
        """The lock file's record ({pid, host, command, started}), or None."""
        try:
            with open(self.path, encoding="utf-8") as f:
                return json.loads(f.read() or "null")
        except (OSError, ValueError):
            return None

    def acquire(self):
        """Takes the lock (or passes, under its owner); raises FolderInUseError when another run has it."""
        os.makedirs(self.folder, exist_ok=True)
        for _ in range(50):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            locked = self._flock(fd)
            if locked is False or not self._same_file(fd):  # held, or replaced under us: look again
                os.close(fd)
                owner = self.owner()
                if locked is False and owner and _is_ours(owner):
                    self.nested = True
                    return self
                if locked is False and owner:
                    raise self._in_use(owner)
                time.sleep(0.02)  # being written or being released
                continue
            owner = self.owner()
            if owner and owner.get("host") != socket.gethostname():
                os.close(fd)
                raise self._in_use(owner, other_host=True)
            if owner and locked is None and _alive(owner.get("pid", -1)):  # no flock here: the PID decides
                os.close(fd)
                if _is_ours(owner):
                    self.nested = True
                    return self
                raise self._in_use(owner)
            if owner:
                logger.warning("%s: stale lock of %s (pid %s on %s, started %s), whose process is gone: taken over",
                               self.path, owner.get("command"), owner.get("pid"), owner.get("host"),
                               owner.get("started"))
            self.fd = fd
            self._write_record()
            return self
        raise FolderInUseError(f"{self.path}: could not be locked (it keeps changing)")

    def _flock(self, fd):
        """True: locked; False: another process holds it; None: this file system has no flock."""
        if fcntl is None:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return False
            return None  # ENOLCK, EOPNOTSUPP ...

    def _same_file(self, fd):
        """The locked file is still the one at ``path`` (a releasing owner may just have removed it)."""
        try:
            return os.stat(self.path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            return False

    def _write_record(self):
        record = {"pid": os.getpid(), "host": socket.gethostname(), "command": self.what,
                  "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        data = json.dumps(record).encode()
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, data, 0)
        self._env = os.environ.get(ENV)
        os.environ[ENV] = ",".join(filter(None, [self._env, f"{record['pid']}@{record['host']}"]))

    def _in_use(self, owner, other_host=False):
        pid = owner.get("pid")
        if other_host:
            where = f"pid {pid} on host {owner.get('host')}, which this host cannot check"
        elif _alive(pid or -1):
            where = f"pid {pid} on {owner.get('host')}, running"
        else:  # e.g. worker processes that outlived a killed owner still hold the lock
            where = f"pid {pid} on {owner.get('host')}, gone, but a process it started still holds the lock"
        return FolderInUseError(
            f"{self.folder} is in use by another run ({owner.get('command')!r}, {where}, since "
            f"{owner.get('started')}); lock file {self.path}. Wait for it to finish"
            + (", or delete the lock file if that run is gone" if other_host else "")
            + ", or use another experiment folder.")

    def release(self):
        """Removes the lock file and drops the lock (a no-op when nested or not held)."""
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            os.remove(self.path)  # while still locked: a newcomer then finds no file, or a new one
        os.close(self.fd)
        self.fd = None
        if self._env is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = self._env

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def held_fds():
    """The file descriptors of the locks this process holds, for ``subprocess``'s ``pass_fds``.

    A child started with them holds the lock with its parent (one open file
    description): if the parent is killed alone, a new run is refused until
    the orphaned child ends too, instead of writing beside it.
    """
    return tuple(lock.fd for lock in _held if lock.fd is not None)


def _main_rank():
    """False on torchrun ranks other than 0: those never lock (rank 0 holds the lock for the job)."""
    return int(os.environ.get("RANK", "0") or 0) == 0


@contextlib.contextmanager
def experiment_lock(folder, what=None):
    """Holds ``folder``'s lock for the ``with`` block (nothing on torchrun ranks other than 0)."""
    if not _main_rank():
        yield None
        return
    with ExperimentLock(folder, what) as lock:
        yield lock


_held = []  # locks taken by take_lock, released by the innermost @releases_locks call


def take_lock(folder, what=None):
    """Takes ``folder``'s lock until the enclosing :func:`releases_locks` function returns (or the process ends).

    Returns the lock (None on torchrun ranks other than 0).
    """
    if not _main_rank():
        return None
    lock = ExperimentLock(folder, what).acquire()
    _held.append(lock)
    return lock


def releases_locks(fn):
    """Decorator: the locks that ``fn`` takes with :func:`take_lock` are released when it returns or raises."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        depth = len(_held)
        try:
            return fn(*args, **kwargs)
        finally:
            while len(_held) > depth:
                _held.pop().release()
    return wrapper
