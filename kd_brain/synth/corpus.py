"""Synthetic multi-voice corpus: grammar text x TTS voices -> Kaldi data dirs.

Layout (the same as the real bed, so ``kd_brain.data.prepare.prepare_corpus`` reads it)::

    <out>/train/{wav.scp,text,utt2spk,spk2utt}    paths: audio/<spk>/<utt>.wav
    <out>/test/{...}                              speakers disjoint from train
    <out>/noise/noise.csv                         ID,duration,path,kind,source,licence
    <out>/noise/{music,talk}/*.wav                synthetic media noise
    <out>/corpus_info.json                        engines, speakers, hours, speed, overlap
    <out>/synth_options.json                      settings a resumed run must match

Every utterance is a pure function of (seed, split, index): its text, speaker,
rate, pitch and level come from its own seeded generator. A split holds the
shortest prefix of utterances reaching its share of ``hours``, so a rerun
(resume) rebuilds the same corpus, skipping files already written; files are
written to a temporary name and renamed, so a finished file is never partial.
"""

import json
import logging
import math
import os
import random
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import soundfile as sf

from kd_brain.pipeline.atomic import atomic_open, write_json, write_wav

from .grammar import Grammar, overlap_rate
from .music import synth_music
from .tts import ENGINES, Speaker, Synthesizer, detect_engines, make_speakers, speaker_dict

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000
DEFAULT_ENGINE_WEIGHTS = {"espeak": 0.55, "flite": 0.3, "piper": 0.15}
NOISE_CSV_FIELDS = ["ID", "duration", "path", "kind", "source", "licence"]
MUSIC_SECONDS, TALK_SECONDS = 45.0, 40.0
FIRST_GUESS_UTT_SECONDS = 3.0  # only sizes the first batch; later batches use measured durations


def _write_wav(path, audio):
    """Atomic 16-bit WAV write (temporary name, then rename; a failed write names the file)."""
    write_wav(path, np.clip(audio, -1, 1), SAMPLE_RATE)


def _write_text(path, lines):
    with atomic_open(path) as f:
        f.writelines(line + "\n" for line in lines)


def plan_utterance(grammar, speakers, split, index, seed, engine_weights):
    """The utterance ``index`` of ``split``: text, speaker and settings.

    The first utterances of a split cycle through its engines, so that even a
    tiny corpus uses every engine; later ones draw the engine by weight.

    Arguments
    ---------
    grammar : Grammar
    speakers : list of Speaker
        The split's speakers.
    split : str
    index : int
    seed : int
    engine_weights : dict

    Returns
    -------
    dict
        ``utt, spk, wav (relative path), text, speaker, rate, pitch, gain_db, pad``

    Example
    -------
    >>> spk = [Speaker("tr000-espeak-x", "espeak", "en-us+Andy", 1.0, 1.0, "train")]
    >>> p = plan_utterance(Grammar(), spk, "train", 7, 1, {"espeak": 1.0})
    >>> p["utt"], p["wav"]
    ('tr000-espeak-x-00007', 'audio/tr000-espeak-x/tr000-espeak-x-00007.wav')
    """
    rng = random.Random(f"{seed}:{split}:{index}")
    text = grammar.sentence(rng)
    engines = sorted({s.engine for s in speakers})
    if index < len(engines):
        engine = engines[index]
    else:
        engine = rng.choices(engines, weights=[engine_weights.get(e, 0) for e in engines])[0]
    spk = rng.choice([s for s in speakers if s.engine == engine])
    utt = f"{spk.id}-{index:05d}"
    return dict(utt=utt, spk=spk.id, wav=f"audio/{spk.id}/{utt}.wav", text=text, speaker=spk,
                # small per-utterance variation around the speaker's settings, as in read speech
                rate=spk.rate * rng.uniform(0.96, 1.04), pitch=spk.pitch * rng.uniform(0.97, 1.03),
                gain_db=rng.uniform(-14, -1), pad=(rng.uniform(0.05, 0.3), rng.uniform(0.05, 0.3)))


# Worker-side state: one synthesizer (and piper model) per process.
_SYN = None


def _init_worker():
    global _SYN
    import torch

    torch.set_num_threads(1)  # one process per core; torch threads only add contention
    _SYN = Synthesizer(SAMPLE_RATE)


def _synth_utterance(job):
    """Synthesises one planned utterance to ``job['path']``; returns (duration, seconds spent or None)."""
    path = job["path"]
    if os.path.isfile(path):
        return sf.info(path).frames / SAMPLE_RATE, None
    start = time.perf_counter()
    try:
        audio = _SYN.speak(job["text"].lower(), job["speaker"], job["rate"], job["pitch"])
    except Exception as e:
        raise RuntimeError(f"utterance {job['utt']} (speaker {job['spk']}, voice {job['speaker'].voice}): {e}") from e
    if len(audio) == 0 or not np.any(audio):
        raise RuntimeError(f"utterance {job['utt']}: engine {job['speaker'].engine} returned silence")
    audio = audio / np.abs(audio).max() * 10 ** (job["gain_db"] / 20)
    pads = [np.zeros(int(p * SAMPLE_RATE), dtype=np.float32) for p in job["pad"]]
    audio = np.concatenate([pads[0], audio, pads[1]])
    _write_wav(path, audio)
    return len(audio) / SAMPLE_RATE, time.perf_counter() - start


def _talk_clip(job):
    """One talk programme: talk sentences from 1-2 noise voices with pauses, ~40 s."""
    path = job["path"]
    if os.path.isfile(path):
        return sf.info(path).frames / SAMPLE_RATE, None
    start = time.perf_counter()
    rng, grammar = random.Random(job["seed"]), Grammar()
    voices = rng.sample(job["speakers"], min(len(job["speakers"]), rng.choice([1, 2])))
    parts, total = [], 0.0
    while total < job["seconds"]:
        audio = _SYN.speak(grammar.talk(rng), voices[len(parts) % len(voices)])
        pause = np.zeros(int(rng.uniform(0.2, 0.9) * SAMPLE_RATE), dtype=np.float32)
        parts += [0.8 * audio / (np.abs(audio).max() + 1e-9), pause]
        total += (len(audio) + len(pause)) / SAMPLE_RATE
    audio = np.concatenate(parts)[: int(job["seconds"] * SAMPLE_RATE)]
    _write_wav(path, audio)
    return len(audio) / SAMPLE_RATE, time.perf_counter() - start


def _music_clip(job):
    path = job["path"]
    if not os.path.isfile(path):
        _write_wav(path, synth_music(job["seed"], job["seconds"], SAMPLE_RATE))
    return sf.info(path).frames / SAMPLE_RATE, None


class _Runner:
    """Maps jobs over worker processes (or in-process for ``num_workers <= 1``)."""

    def __init__(self, num_workers):
        self.pool = ProcessPoolExecutor(num_workers, initializer=_init_worker) if num_workers > 1 else None
        global _SYN
        if self.pool is None and _SYN is None:
            _SYN = Synthesizer(SAMPLE_RATE)  # in-process: leave torch's thread setting alone

    def map(self, fn, jobs):
        return self.pool.map(fn, jobs, chunksize=4) if self.pool else map(fn, jobs)

    def close(self):
        if self.pool:
            self.pool.shutdown()


def _generate_split(runner, grammar, speakers, split, target_s, out_dir, seed, engine_weights, stats):
    """Generates the shortest prefix of ``split`` reaching ``target_s`` seconds; returns its plans."""
    plans, total, t0 = [], 0.0, time.perf_counter()
    while total < target_s:
        # size the next batch from the durations seen so far
        mean = total / len(plans) if plans else FIRST_GUESS_UTT_SECONDS
        batch = [plan_utterance(grammar, speakers, split, i, seed, engine_weights)
                 for i in range(len(plans), len(plans) + max(4, math.ceil((target_s - total) / mean * 1.02)))]
        for p in batch:
            p["path"] = os.path.join(out_dir, p["wav"])
        last_log = time.perf_counter()
        for p, (dur, spent) in zip(batch, runner.map(_synth_utterance, batch)):
            if total >= target_s:  # past the target: not part of the corpus
                if os.path.isfile(p["path"]):
                    os.remove(p["path"])
                continue
            p["duration"] = dur
            plans.append(p)
            total += dur
            s = stats.setdefault(p["speaker"].engine, {"audio_s": 0.0, "cpu_s": 0.0})
            if spent is not None:
                s["audio_s"] += dur
                s["cpu_s"] += spent
            if time.perf_counter() - last_log > 10 or total >= target_s:
                last_log = time.perf_counter()
                logger.info("%s: %d utterances, %.2f / %.2f h (%.0f%%), %.0fs elapsed", split, len(plans),
                            total / 3600, target_s / 3600, 100 * min(1, total / target_s), last_log - t0)
    return plans


def _write_kaldi(data_dir, plans):
    os.makedirs(data_dir, exist_ok=True)
    plans = sorted(plans, key=lambda p: p["utt"])
    _write_text(os.path.join(data_dir, "wav.scp"), [f"{p['utt']} {p['wav']}" for p in plans])
    _write_text(os.path.join(data_dir, "text"), [f"{p['utt']} {p['text']}" for p in plans])
    _write_text(os.path.join(data_dir, "utt2spk"), [f"{p['utt']} {p['spk']}" for p in plans])
    spk2utt = {}
    for p in plans:
        spk2utt.setdefault(p["spk"], []).append(p["utt"])
    _write_text(os.path.join(data_dir, "spk2utt"), [f"{s} {' '.join(u)}" for s, u in sorted(spk2utt.items())])


def _generate_noise(runner, out_dir, speakers, n_music, n_talk, seed, warnings):
    """Writes synthetic music and talk clips and ``noise/noise.csv``; returns the CSV rows."""
    jobs = [dict(kind="music", id=f"synth-music_{k:03d}", seed=seed * 1000 + k, seconds=MUSIC_SECONDS)
            for k in range(n_music)]
    if n_talk and not speakers:
        warnings.append("no TTS voice is reserved for talk noise (needs espeak-ng): no talk clips made")
        logger.warning(warnings[-1])
    elif n_talk:
        jobs += [dict(kind="talk", id=f"tts-talk_{k:03d}", seed=f"{seed}:talk:{k}", seconds=TALK_SECONDS,
                      speakers=speakers) for k in range(n_talk)]
    for j in jobs:
        j["rel"] = f"noise/{j['kind']}/{j['id']}.wav"
        j["path"] = os.path.join(out_dir, j["rel"])
    rows = []
    music = [j for j in jobs if j["kind"] == "music"]
    talk = [j for j in jobs if j["kind"] == "talk"]
    results = list(runner.map(_music_clip, music)) + list(runner.map(_talk_clip, talk))
    for j, (dur, _) in zip(music + talk, results):
        source, licence = (("synth-music", "synthetic (kd_brain.synth.music, seeded synthesiser)")
                           if j["kind"] == "music" else
                           ("tts-talk", "synthetic (kd_brain.synth TTS talk, espeak-ng voices reserved for noise)"))
        rows.append(dict(ID=j["id"], duration=f"{dur:.2f}", path=j["rel"], kind=j["kind"], source=source,
                         licence=licence))
    os.makedirs(os.path.join(out_dir, "noise"), exist_ok=True)
    import csv

    with atomic_open(os.path.join(out_dir, "noise", "noise.csv"), newline="") as f:
        w = csv.DictWriter(f, fieldnames=NOISE_CSV_FIELDS)
        w.writeheader()
        w.writerows(rows)
    logger.info("noise: %d music and %d talk clips", len(music), len(talk))
    return rows


def _check_options(out_dir, options):
    """Refuses to resume a corpus made with settings that change its utterances."""
    path = os.path.join(out_dir, "synth_options.json")
    if os.path.isfile(path):
        with open(path) as f:
            old = json.load(f)
        changed = sorted(k for k in set(old) | set(options) if old.get(k) != options.get(k))
        if changed:
            raise ValueError(f"{path}: the corpus in {out_dir} was generated with other settings ({changed}: "
                             f"{[old.get(k) for k in changed]} -> {[options.get(k) for k in changed]}); "
                             "use another output directory or delete this one")
    else:  # atomic: a run killed while writing it left a truncated file that stopped every rerun
        write_json(path, options, indent=1, sort_keys=True)


def generate_corpus(
    out_dir,
    hours=3.0,
    seed=1234,
    test_fraction=0.15,
    n_train_speakers=150,
    n_test_speakers=20,
    n_noise_speakers=12,
    engines=ENGINES,
    engine_weights=None,
    n_music=40,
    n_talk=40,
    num_workers=2,
):
    """Generates the synthetic corpus (see module docstring); resumable.

    Arguments
    ---------
    out_dir : str
        Corpus root.
    hours : float
        Speech audio in total (train + test), in hours.
    seed : int
        Seed for text, speakers and settings.
    test_fraction : float
        Share of ``hours`` that goes to the test set.
    n_train_speakers, n_test_speakers, n_noise_speakers : int
        Speakers drawn from the voices reserved for each use.
    engines : sequence of str
        Engines to use (subset of ``ENGINES``); missing ones are reported.
    engine_weights : dict, optional
        Share of speakers and utterances per engine (default
        ``DEFAULT_ENGINE_WEIGHTS``; piper is the slowest, so it is a minority).
    n_music, n_talk : int
        Synthetic media-noise clips to write (0 for none).
    num_workers : int
        Processes (1 = in this process).

    Returns
    -------
    dict
        The corpus info (also written to ``<out_dir>/corpus_info.json``).

    Example
    -------
    >>> import tempfile
    >>> info = generate_corpus(tempfile.mkdtemp(), hours=0.005, n_train_speakers=3, n_test_speakers=2,
    ...                        n_music=0, n_talk=0, num_workers=1)  # doctest: +SKIP
    """
    engine_weights = dict(engine_weights or DEFAULT_ENGINE_WEIGHTS)
    found = detect_engines(engines)
    available = {e: i for e, i in found.items() if i["available"]}
    missing = {e: i["detail"] for e, i in found.items() if not i["available"]}
    warnings = [f"TTS engine {e} missing: {d}" for e, d in missing.items()]
    if missing and not (set(available) & {"espeak", "flite"}):
        warnings.append("no Debian TTS engine (espeak-ng, flite): falling back to the pip engine(s) "
                        f"{sorted(available)}")
        logger.warning(warnings[-1])
    if available and not any(s == "test" for i in available.values() for s in i["voices"].values()):
        # pip-only fallback (piper has one voice): share the train voices, split by pitch
        for i in available.values():
            i["voices"] = {v: "shared" if s == "train" else s for v, s in i["voices"].items()}
        warnings.append(f"no voice reserved for test among {sorted(available)}: train and test speakers share "
                        "voices and differ only in pitch (lower half train, upper half test)")
        logger.warning(warnings[-1])
    options = dict(seed=seed, test_fraction=test_fraction, n_train_speakers=n_train_speakers,
                   n_test_speakers=n_test_speakers, n_noise_speakers=n_noise_speakers,
                   engine_weights=engine_weights, engines_used=sorted(available),
                   voices={e: i["voices"] for e, i in available.items()})
    _check_options(out_dir, options)

    speakers = make_speakers(available, {"train": n_train_speakers, "test": n_test_speakers,
                                         "noise": n_noise_speakers}, engine_weights, seed)
    by_split = {s: [x for x in speakers if x.split == s] for s in ("train", "test", "noise")}
    for split in ("train", "test"):
        if not by_split[split]:
            raise RuntimeError(f"no {split} speakers: the installed engines {sorted(available)} reserve no "
                               f"voice for {split}; install espeak-ng or flite")

    grammar, stats, plans = Grammar(), {}, {}
    runner = _Runner(num_workers)
    t0 = time.perf_counter()
    try:
        for split, share in (("train", 1 - test_fraction), ("test", test_fraction)):
            plans[split] = _generate_split(runner, grammar, by_split[split], split, hours * 3600 * share,
                                           out_dir, seed, engine_weights, stats)
            _write_kaldi(os.path.join(out_dir, split), plans[split])
        noise_rows = _generate_noise(runner, out_dir, by_split["noise"], n_music, n_talk, seed, warnings)
    finally:
        runner.close()
    info = _corpus_info(out_dir, hours, seed, found, warnings, speakers, plans, stats, grammar, noise_rows,
                        time.perf_counter() - t0, num_workers)
    _keep_earlier_speeds(os.path.join(out_dir, "corpus_info.json"), info)
    write_json(os.path.join(out_dir, "corpus_info.json"), info, indent=1)
    logger.info("corpus in %s: %s h train, %s h test, speakers %s, test-in-train sentences %.1f%%",
                out_dir, info["hours"]["train"], info["hours"]["test"], info["speakers"],
                100 * info["test_in_train_sentence_rate"])
    return info


def _keep_earlier_speeds(path, info):
    """A resumed run measures only what it generated: keep earlier runs' speeds and run records."""
    earlier = {}
    if os.path.isfile(path):
        with open(path) as f:
            earlier = json.load(f)
    for e, i in info["engines"].items():
        old = earlier.get("engines", {}).get(e, {}).get("x_real_time_per_process")
        if old is not None and "x_real_time_per_process" not in i:
            i["x_real_time_per_process"] = old
    info["runs"] = earlier.get("runs", []) + [info.pop("this_run")]
    info["this_run"] = info["runs"][-1]


def _corpus_info(out_dir, hours, seed, found, warnings, speakers, plans, stats, grammar, noise_rows, wall, workers):
    """The corpus info JSON: what was made, with which engines, and how fast."""
    used = {p["spk"] for ps in plans.values() for p in ps}
    per_engine = {e: {"available": found[e]["available"] if e in found else False,
                      "detail": found.get(e, {}).get("detail", "not requested"),
                      "utterances": {s: sum(p["speaker"].engine == e for p in plans[s]) for s in plans},
                      "hours": {s: round(sum(p["duration"] for p in plans[s] if p["speaker"].engine == e) / 3600, 3)
                                for s in plans}}
                  for e in ENGINES}
    for e, s in stats.items():
        if s["cpu_s"] > 0:
            per_engine[e]["x_real_time_per_process"] = round(s["audio_s"] / s["cpu_s"], 1)
    new_audio = sum(s["audio_s"] for s in stats.values())
    texts = {s: [p["text"] for p in plans[s]] for s in plans}
    return {
        "generator": "kd_brain.synth.corpus.generate_corpus",
        "synthetic": True,
        "seed": seed,
        "hours_requested": hours,
        "hours": {s: round(sum(p["duration"] for p in plans[s]) / 3600, 3) for s in plans},
        "utterances": {s: len(plans[s]) for s in plans},
        "speakers": {s: len({p["spk"] for p in plans[s]}) for s in plans},
        "engines": per_engine,
        "missing_engines": sorted(e for e, i in found.items() if not i["available"]),  # requested, absent
        "warnings": warnings,
        "vocabulary_size": len(grammar.vocabulary()),
        "vocabulary_used": len({w for t in texts.values() for s in t for w in s.split()}),
        "test_in_train_sentence_rate": round(overlap_rate(texts["train"], texts["test"]), 4),
        "mean_words_per_utterance": round(float(np.mean([len(t.split()) for ts in texts.values() for t in ts])), 2),
        "noise": {k: sum(r["kind"] == k for r in noise_rows) for k in ("music", "talk")},
        "noise_csv": "noise/noise.csv",
        "this_run": {"wall_s": round(wall, 1), "workers": workers, "new_audio_h": round(new_audio / 3600, 3),
                     "x_real_time_wall": round(new_audio / wall, 1) if new_audio else None},
        "speaker_inventory": [dict(speaker_dict(s), used=s.id in used) for s in speakers],
    }
