"""All-or-nothing file writes: under its name a file is complete, or it is not there.

A writer fills a temporary file beside the target (same folder, so the
rename cannot cross file systems), flushes and fsyncs it, then
``os.replace``-s it onto the name. A process killed at any point, or a write
that fails (a full disk: ``ENOSPC``; a quota; ``EFBIG``), leaves the old
file or the new complete one, never a truncated one under the name that a
rerun trusts. On any error the temporary file is removed and the error is
re-raised; an ``OSError`` is re-raised naming the target file (a failing
``write`` names no file of its own).

Temporary names are ``<name>.tmp<pid><ext>``: nothing reads them (see
:func:`is_temporary`), the extension stays last for writers that infer the
format from it (soundfile), and the pid keeps concurrent writers (several
ranks writing one identical file) apart. A killed writer leaves its
temporary file behind; the next write of the same name by the same pid
replaces it, and nothing ever mistakes it for the file.

Example
-------
>>> import tempfile, json
>>> d = tempfile.mkdtemp()
>>> write_json(os.path.join(d, "a.json"), {"x": 1})
>>> json.load(open(os.path.join(d, "a.json")))
{'x': 1}
>>> with atomic_open(os.path.join(d, "b.txt")) as f:  # doctest: +ELLIPSIS
...     _ = f.write("half")
...     raise OSError(errno.ENOSPC, "No space left on device")
Traceback (most recent call last):
...
OSError: [Errno 28] No space left on device: '.../b.txt'
>>> sorted(os.listdir(d))  # no b.txt, and no temporary file left
['a.json']
"""

import contextlib
import errno  # noqa: F401  (the doctest's)
import json
import os
import re

_TMP_RE = re.compile(r"\.tmp\d+(\.[A-Za-z0-9]+)?$")


def temporary_name(path, suffix=None):
    """The temporary file :func:`atomic_path` writes for ``path`` (``suffix``: default, ``path``'s extension).

    Example
    -------
    >>> temporary_name("/x/u1.wav").startswith("/x/u1.wav.tmp") and temporary_name("/x/u1.wav").endswith(".wav")
    True
    """
    if suffix is None:
        suffix = os.path.splitext(path)[1]
    return f"{path}.tmp{os.getpid()}{suffix}"


def is_temporary(name):
    """Whether a file name is one of this module's temporary names.

    Example
    -------
    >>> is_temporary("u1.wav.tmp123.wav"), is_temporary("u1.wav")
    (True, False)
    """
    return bool(_TMP_RE.search(name))


def naming(error, path):
    """``error`` as an ``OSError`` that names ``path`` (the same errno, so the same subclass)."""
    if error.filename == path:
        return error
    strerror = error.strerror or str(error)
    if error.filename is not None and error.filename != path:
        strerror += f" ({error.filename})"
    return OSError(error.errno, strerror, path)


def _discard(tmp):
    with contextlib.suppress(OSError):
        os.remove(tmp)


def _commit(tmp, path, fsync):
    if fsync:  # a full disk may only show at fsync (delayed allocation, network file systems)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    os.replace(tmp, path)


@contextlib.contextmanager
def atomic_path(path, suffix=None, fsync=True):
    """Yields a temporary path to write ``path`` through (for writers that take a path: soundfile, torch.save).

    On a normal exit the temporary file is fsynced and renamed onto
    ``path``; on any error it is removed and the error re-raised (an
    ``OSError`` naming ``path``).

    Example
    -------
    >>> import tempfile
    >>> p = os.path.join(tempfile.mkdtemp(), "x.bin")
    >>> with atomic_path(p) as tmp:
    ...     _ = open(tmp, "wb").write(b"abc")
    >>> open(p, "rb").read()
    b'abc'
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = temporary_name(path, suffix)
    try:
        yield tmp
        _commit(tmp, path, fsync)
    except OSError as e:
        _discard(tmp)
        raise naming(e, path) from e
    except BaseException as e:
        _discard(tmp)
        if hasattr(e, "add_note"):  # Python >= 3.11
            e.add_note(f"(while writing {path}; nothing was written under that name)")
        raise


@contextlib.contextmanager
def atomic_open(path, mode="w", fsync=True, **kwargs):
    """``open(path, mode)`` that writes all or nothing (see the module docstring); ``kwargs`` go to ``open``.

    Text mode defaults to UTF-8.
    """
    if "b" not in mode:
        kwargs.setdefault("encoding", "utf-8")
    with atomic_path(path, suffix="", fsync=fsync) as tmp:
        with open(tmp, mode, **kwargs) as f:
            yield f


def write_bytes(path, data, fsync=True):
    """Writes ``data`` (bytes) to ``path`` atomically."""
    with atomic_open(path, "wb", fsync=fsync) as f:
        f.write(data)


def write_text(path, text, fsync=True):
    """Writes ``text`` to ``path`` atomically (UTF-8)."""
    with atomic_open(path, "w", fsync=fsync) as f:
        f.write(text)


def write_json(path, obj, fsync=True, **kwargs):
    """Writes ``obj`` as JSON to ``path`` atomically (``kwargs`` go to ``json.dump``, e.g. ``indent``)."""
    with atomic_open(path, "w", fsync=fsync) as f:
        json.dump(obj, f, **kwargs)


def write_wav(path, audio, sample_rate, subtype="PCM_16", fsync=True):
    """Writes a WAV file atomically, the same bytes as ``soundfile.write(path, ...)``.

    The file is encoded in memory and written with :func:`write_bytes`: a
    failing write inside libsndfile surfaces as ``LibsndfileError: System
    error.``, naming neither the file nor the cause; a Python write names both.

    Example
    -------
    >>> import tempfile, numpy as np, soundfile as sf
    >>> p = os.path.join(tempfile.mkdtemp(), "x.wav")
    >>> write_wav(p, np.zeros(160), 16000)
    >>> sf.info(p).frames
    160
    """
    import io

    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, audio, sample_rate, subtype=subtype, format="WAV")
    write_bytes(path, buf.getvalue(), fsync=fsync)

