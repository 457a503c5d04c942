"""Faults: a full disk leaves no half-written file a rerun would trust; one run per experiment folder;
a checkpoint killed while saving is never loaded. (Kill-anywhere trials: tests/test_faults.py.)"""

import builtins
import errno
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import types

import numpy as np
import pytest
import torch

from kd_brain.pipeline.atomic import is_temporary
from kd_brain.pipeline.lock import ENV, LOCK_FILE, ExperimentLock, FolderInUseError, experiment_lock, take_lock
from tests.conftest import REPO, load_recipe, overrides_argv

REAL_OPEN = builtins.open


# ---------------------------------------------------------------- a disk that fills up mid-file


class Disk:
    """``open`` for a test: files opened to write take ``room`` more bytes in all, then ENOSPC mid-write."""

    def __init__(self, room):
        self.room, self.written = room, 0

    def open(self, file, mode="r", *args, **kwargs):
        f = REAL_OPEN(file, mode, *args, **kwargs)
        return _Limited(f, self) if set(mode) & set("wax+") else f


class _Limited:
    def __init__(self, f, disk):
        self._f, self._disk = f, disk

    def write(self, data):
        if len(data) > self._disk.room:  # what fits goes to disk, then the disk is full
            self._f.write(data[: self._disk.room])
            self._f.flush()
            self._disk.room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._disk.room -= len(data)
        self._disk.written += len(data)
        return self._f.write(data)

    def writelines(self, lines):
        for line in lines:
            self.write(line)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()

    def __getattr__(self, name):
        return getattr(self._f, name)


def files(folder):
    return {os.path.relpath(os.path.join(d, n), folder): content(os.path.join(d, n))
            for d, _, names in os.walk(folder) for n in names}


def content(path):
    """A file's bytes; a stage record without its fingerprint, which names the run (new for every run)."""
    data = REAL_OPEN(path, "rb").read()
    if not path.endswith(".done"):
        return data
    record = json.loads(data)
    assert len(record.pop("fingerprint")) == 16
    return json.dumps(record).encode()


def store_writes(d):
    """Five utterances into a soft-label store, closed and indexed."""
    from kd_brain.store import SoftLabelWriter, merge_index

    g = torch.Generator().manual_seed(0)
    with SoftLabelWriter(str(d), k=3, vocab_size=8, meta={"tok": "x"}) as w:
        for i in range(5):
            if f"u{i}" not in w:
                w.add(f"u{i}", torch.randn(40, 8, generator=g))
    merge_index(str(d))


def results_writes(d):
    from kd_brain.brains.evaluate import update_results

    update_results(str(d), "teacher", {"clean": {"greedy": 10.0, "beam": 9.5, "n_utts": 3,
                                                 "utt_errors": {"beam": {"u1": [1, 4]}}}})


def csv_writes(d):
    from kd_brain.data.prepare import write_csv

    write_csv(str(d / "labelled.csv"), [{"ID": f"u{i}", "wrd": "PLAY SOME MUSIC " * 5} for i in range(40)], ["ID", "wrd"])


def corpus_wav_writes(d):
    from kd_brain.synth.corpus import _write_wav

    _write_wav(str(d / "audio" / "u1.wav"), np.sin(np.arange(16000) / 7.0) * 0.3)


def condition_wav_writes(d):
    from kd_brain.pipeline.atomic import write_wav  # what kd_brain.noise.conditions writes each noisy utterance with

    write_wav(str(d / "noisy_sim" / "u1.wav"), np.cos(np.arange(8000) / 5.0) * 0.2, 16000)


def arpa_writes(d):
    from kd_brain.decode.lm import write_arpa

    write_arpa([["PLAY", "SOME", "MUSIC"], ["STOP"], ["PLAY", "IT"]] * 3, str(d / "words.arpa"))


def kaldi_writes(d):
    from kd_brain.synth.corpus import _write_text

    _write_text(str(d / "train" / "text"), [f"u{i} TURN ON THE LIGHTS" for i in range(50)])


def stage_done_writes(d):
    from kd_brain.pipeline.runner import run_stage

    run_stage(str(d), ".", "noop", ["-c", "pass"], [], force=False)  # <d>/stages/noop.done


WRITERS = [csv_writes, store_writes, results_writes, corpus_wav_writes, condition_wav_writes, arpa_writes,
           kaldi_writes, stage_done_writes]


@pytest.mark.parametrize("writer", WRITERS, ids=[w.__name__ for w in WRITERS])
def test_full_disk_leaves_no_half_written_file(writer, tmp_path, monkeypatch, capfd):
    """ENOSPC anywhere in a writer's output: an error naming the file, nothing partial under a final name,
    no temporary left; once there is room, the rerun writes what a clean run does."""
    clean = tmp_path / "clean"
    clean.mkdir()
    disk = Disk(10**9)
    with monkeypatch.context() as m:
        m.setattr(builtins, "open", disk.open)
        writer(clean)
    reference, total = files(clean), disk.written
    assert total > 50
    for room in (0, 1, total // 3, total // 2, total - 2):
        d = tmp_path / f"room{room}"
        d.mkdir()
        with monkeypatch.context() as m:
            m.setattr(builtins, "open", Disk(room).open)
            with pytest.raises(OSError) as err:
                writer(d)
        assert err.value.errno == errno.ENOSPC
        named = err.value.filename
        # a file of the clean run, or a stage's ``.started`` marker (written first, removed once the stage is done)
        written = named and (os.path.relpath(named, d) in reference or str(named).endswith(".started"))
        assert written and str(named) in str(err.value), (room, err.value)
        for rel, data in files(d).items():
            assert not is_temporary(rel) and not rel.endswith(".tmp"), f"room {room}: {rel} left behind"
            if rel.endswith(".started"):  # a stage that did not finish: its marker, whole, for the rerun to read
                assert json.loads(data)["inputs"], f"room {room}: {rel} is half-written"
                continue
            assert data == reference.get(rel), f"room {room}: {rel} is half-written"  # all there is complete
        writer(d)  # the rerun, with room
        assert files(d) == reference, f"room {room}: the rerun differs from a clean run"


def test_full_disk_keeps_the_older_version(tmp_path, monkeypatch):
    from kd_brain.data.prepare import read_csv, write_csv

    path = str(tmp_path / "dev.csv")
    write_csv(path, [{"ID": "old", "wrd": "OLD"}], ["ID", "wrd"])
    monkeypatch.setattr(builtins, "open", Disk(30).open)
    with pytest.raises(OSError, match=f"No space left on device: '{path}'"):
        write_csv(path, [{"ID": f"u{i}", "wrd": "NEW"} for i in range(20)], ["ID", "wrd"])
    monkeypatch.undo()
    assert read_csv(path) == [{"ID": "old", "wrd": "OLD"}] and os.listdir(tmp_path) == ["dev.csv"]


def test_full_disk_in_the_kernel_names_the_file(tmp_path):
    """A real failing write (the file-size limit: EFBIG from the kernel, as a full disk gives ENOSPC)."""
    script = textwrap.dedent(f"""
        import json, os, resource, signal, sys, numpy as np
        sys.path.insert(0, {str(REPO)!r})
        from kd_brain.pipeline.atomic import write_json, write_wav
        from kd_brain.data.prepare import write_csv
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (20000, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
        d, out = {str(tmp_path)!r}, {{}}
        for name, write in [("a.wav", lambda p: write_wav(p, np.zeros(40000), 16000)),
                            ("a.csv", lambda p: write_csv(p, [{{"ID": str(i), "wrd": "X" * 50}} for i in range(900)], ["ID", "wrd"])),
                            ("a.json", lambda p: write_json(p, list(range(9000))))]:
            try:
                write(os.path.join(d, name))
            except OSError as e:
                out[name] = [e.errno, str(e)]
        out["files"] = sorted(os.listdir(d))
        print(json.dumps(out))
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    for name in ("a.wav", "a.csv", "a.json"):
        assert out[name][0] == errno.EFBIG and str(tmp_path / name) in out[name][1], out
    assert out["files"] == []  # no half file, no temporary


# ---------------------------------------------------------------- one run per folder

HOLDER = textwrap.dedent("""
    import os, subprocess, sys
    sys.path.insert(0, {repo!r})
    from kd_brain.pipeline.lock import held_fds, take_lock
    lock = take_lock({folder!r}, what="holder")
    print("held", os.getpid(), flush=True)
    if {child!r}:  # a child of the owner (a stage under run.py), once by /proc, once by the environment only
        child = "import sys; sys.path.insert(0, {repo!r}); import kd_brain.pipeline.lock as L; " + {child!r} + \\
            "; print(L.ExperimentLock({folder!r}).acquire().nested)"
        print("child", subprocess.run([sys.executable, "-c", child], capture_output=True, text=True).stdout.strip(),
              flush=True)
    if {orphan!r}:  # a stage started as run.py starts them (with the lock's fd), outliving its killed parent
        stage = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], pass_fds=held_fds())
        print("orphan", stage.pid, flush=True)
    if {die!r}:
        os.kill(os.getpid(), 9)
    sys.stdin.read()
    lock.release()
""")



def holder(folder, child="", die=False, orphan=False):
    """A process holding ``folder``'s lock (until its stdin closes); returns it once the lock is held."""
    p = subprocess.Popen([sys.executable, "-c", HOLDER.format(repo=str(REPO), folder=str(folder), child=child,
                                                               die=die, orphan=orphan)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().startswith("held"), "the holder did not take the lock"
    return p


def test_a_second_run_on_a_folder_in_use_is_refused(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    p = holder(tmp_path)
    try:
        with pytest.raises(FolderInUseError) as err:
            ExperimentLock(str(tmp_path)).acquire()
        msg = str(err.value)
        assert f"pid {p.pid} on {socket.gethostname()}, running" in msg and "'holder'" in msg
        assert str(tmp_path / LOCK_FILE) in msg
        # run.py and a stage script by hand: refused before they write anything
        run = subprocess.run([sys.executable, str(REPO / "recipes" / "KD-Noise" / "run.py"), "--exp", str(tmp_path),
                              "--stages", "none"], capture_output=True, text=True, timeout=120)
        assert run.returncode != 0 and "is in use by another run" in run.stderr, run.stderr[-2000:]
        with pytest.raises(FolderInUseError):
            load_recipe("train").main([str(REPO / "hparams" / "teacher_bed.yaml"), f"--exp_folder={tmp_path}",
                                       "--noprogressbar"] + overrides_argv())
        assert list(files(tmp_path)) == [LOCK_FILE]  # (loading the config made an empty teacher/: no file)
    finally:
        p.communicate("")
    assert not (tmp_path / LOCK_FILE).exists()  # released on exit
    with experiment_lock(str(tmp_path)) as lock:  # and free again
        assert not lock.nested


def test_children_of_the_lock_owner_pass(tmp_path):
    """run.py's stage subprocesses (and torchrun's ranks under them) write into the folder run.py locked."""
    for how in ("L.os.environ.pop(L.ENV)", "L._ancestors = lambda pid: []"):  # by /proc ancestry; by the owner's environment only
        p = holder(tmp_path, child=how)
        assert p.stdout.readline().strip() == "child True", how
        p.communicate("")


def test_a_stale_lock_of_a_dead_process_is_taken_over_and_logged(tmp_path, caplog):
    p = holder(tmp_path, die=True)
    p.wait()
    assert p.returncode == -signal.SIGKILL and (tmp_path / LOCK_FILE).exists()  # killed: the file stays
    with caplog.at_level(logging.WARNING, logger="kd_brain.pipeline.lock"):
        with experiment_lock(str(tmp_path)) as lock:
            assert lock.owner()["pid"] == os.getpid()
    assert f"stale lock of holder (pid {p.pid} on {socket.gethostname()}" in caplog.text and "taken over" in caplog.text


def test_a_stage_outliving_its_killed_run_keeps_the_folder_locked(tmp_path):
    p = holder(tmp_path, orphan=True, die=True)
    stage = int(p.stdout.readline().split()[1])
    p.wait()
    try:
        with pytest.raises(FolderInUseError, match=f"pid {p.pid} .*gone, but a process it started still holds"):
            ExperimentLock(str(tmp_path)).acquire()
    finally:
        os.kill(stage, signal.SIGKILL)
    for _ in range(250):  # the orphan gone (once the kernel has closed its files): stale, taken over
        try:
            with experiment_lock(str(tmp_path)):
                break
        except FolderInUseError:
            time.sleep(0.02)
    else:
        raise AssertionError("the lock stayed held after its last holder was killed")


def test_a_lock_of_another_host_is_refused(tmp_path):
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": 1, "host": "elsewhere", "command": "run.py",
                                                  "started": "today"}))
    with pytest.raises(FolderInUseError, match="pid 1 on host elsewhere, which this host cannot check.*delete the lock"):
        ExperimentLock(str(tmp_path)).acquire()


def test_torchrun_ranks_other_than_0_take_no_lock(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    assert take_lock(str(tmp_path)) is None and not (tmp_path / LOCK_FILE).exists()


# ---------------------------------------------------------------- checkpoints and the curve


def test_a_checkpoint_killed_while_saving_is_never_loaded(tmp_path):
    """SpeechBrain writes CKPT.yaml first: a save that dies after it looked like the newest checkpoint."""
    from speechbrain.utils.checkpoints import Checkpointer

    from kd_brain.brains.ctc import atomic_checkpoints

    def dies(obj, path):
        raise KeyboardInterrupt("killed while saving")

    for atomic, listed in ((False, [1, 2]), (True, [1])):
        ck = Checkpointer(str(tmp_path / str(atomic)), {"model": torch.nn.Linear(2, 2)})
        if atomic:
            atomic_checkpoints(ck)
        ck.save_checkpoint(meta={"n": 1})
        ck.add_recoverable("late", torch.nn.Linear(2, 2), custom_save_hook=dies)
        with pytest.raises(KeyboardInterrupt):
            ck.save_checkpoint(meta={"n": 2})
        assert sorted(c.meta["n"] for c in ck.list_checkpoints()) == listed  # (the plain one: a broken newest)
    del ck.recoverables["late"]
    ck.save_checkpoint(meta={"n": 3})
    assert len(os.listdir(tmp_path / "True")) == 2  # the unfinished save is removed by the next one


def test_a_redone_epoch_replaces_its_curve_row(tmp_path):
    from kd_brain.brains.ctc import TeacherBrain

    fake = types.SimpleNamespace(hparams=types.SimpleNamespace(output_folder=str(tmp_path)), train_loss=1.0)
    for epoch in (1, 2, 2):  # killed after epoch 2's row, before its checkpoint: the epoch is redone
        TeacherBrain._append_curve(fake, epoch, 10.0 * epoch, 2.0, 50.0)
    rows = (tmp_path / "curve.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows] == ["epoch", "1", "2"]
