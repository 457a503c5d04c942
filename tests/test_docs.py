"""The READMEs' commands run as written: every script, option, config and path they name exists.

A newcomer copies commands from README.md and recipes/KD-Noise/README.md. This
test reads their fenced code blocks (bash, sh, shell, console or plain), finds
each ``python3``/``torchrun`` invocation of a script and each ``bash`` script,
and checks that

* the script exists;
* every ``--option`` is accepted: for an argparse script it appears in the
  script's ``--help`` (subcommands included); for the scripts that take a YAML
  and ``--key=value`` overrides (train.py, prepare.py, extract.py,
  pseudo_label.py) it is a top-level key of a YAML on the command line or one
  of SpeechBrain's run options; run.py forwards unknown ``--key=value`` to its
  stages, so there it may also be a top-level key of a config in hparams/;
* every repository path a command names (configs, scripts, tests) exists.

It also checks that inline code naming a file (``recipes/KD-Noise/...``,
``hparams/...``, ``kd_brain/...`` or a ``kd_brain.x.y`` module) and every
relative link of the documents point at something that exists.
"""

import functools
import os
import re
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
READMES = ["README.md", "recipes/KD-Noise/README.md"]
DOCS = READMES + ["RESULTS.md", "recipes/KD-Noise/NOTES.md"]  # their links are checked too
YAML_SCRIPTS = ("train.py", "prepare.py", "extract.py", "pseudo_label.py")
# SpeechBrain's run options (speechbrain.core.parse_arguments), accepted by every YAML script and run.py
RUN_OPTS = {"device", "precision", "eval_precision", "data_parallel_backend", "distributed_backend", "debug",
            "noprogressbar", "find_unused_parameters", "grad_accumulation_factor", "max_grad_norm"}
NOT_CONFIGS = ("model.yaml", "large.yaml")  # an include (arch's keys) and per-stage sections: no top-level keys
SHELLS = ("", "bash", "sh", "shell", "console")
SEPARATORS = ("&&", "||", ";", "|")
REPO_PREFIXES = ("recipes/", "hparams/", "kd_brain/", "tests/", "bench/", ".ci/")
# Not repository paths: outputs, absolute paths, the shared bed beside the clone, placeholders
NOT_REPO = ("exp/", "/", "../", "~", "$", "<", "MODEL_DIR")


# ---- reading the documents ------------------------------------------------------------------

def code_blocks(text):
    """[(language, first line number, [lines])] of the fenced blocks of a markdown text."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        m = re.match(r"^\s*```\s*([\w+-]*)", lines[i])
        if not m:
            i += 1
            continue
        start, body = i + 1, []
        i += 1
        while i < len(lines) and not re.match(r"^\s*```\s*$", lines[i]):
            body.append(lines[i])
            i += 1
        blocks.append((m.group(1).lower(), start + 1, body))
        i += 1
    return blocks


def command_lines(text):
    """[(line number, command)] of the shell blocks: continuation lines joined, console prompts kept only."""
    out = []
    for lang, first, body in code_blocks(text):
        if lang not in SHELLS:
            continue
        pending, at = "", None
        for n, line in enumerate(body, first):
            if lang == "console":
                if not (line.startswith("$ ") or pending):
                    continue
                line = line[2:] if line.startswith("$ ") else line
            at = n if not pending else at
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1] + " "
                continue
            cmd = (pending + line).strip()
            pending = ""
            if cmd and not cmd.startswith("#"):
                out.append((at, cmd))
    return out


def invocations(cmd):
    """[(launcher, script, args)] of one command line: ``python3 X.py ...``, ``torchrun ... X.py ...``,
    ``bash X.sh ...`` (``python3 -m module`` gives script None). Raises ValueError on bad quoting."""
    tokens = shlex.split(cmd, comments=True)
    parts, cur = [], []
    for t in tokens:
        if t in SEPARATORS:
            parts.append(cur)
            cur = []
        else:
            cur.append(t)
    parts.append(cur)
    out = []
    for part in parts:
        for i, t in enumerate(part):
            name = os.path.basename(t)
            if re.fullmatch(r"python3?(\.\d+)?", name):
                rest = part[i + 1:]
                if rest[:1] == ["-m"]:
                    out.append((name, None, rest[2:]))
                elif rest:
                    out.append((name, rest[0], rest[1:]))
                break
            if name == "torchrun":
                rest = part[i + 1:]
                j = next((j for j, a in enumerate(rest) if a.endswith(".py")), None)
                if j is not None:
                    out.append(("torchrun", rest[j], rest[j + 1:]))
                break
            if name == "bash" and i + 1 < len(part):
                out.append(("bash", part[i + 1], part[i + 2:]))
                break
    return out


def option_name(arg):
    """``--key=value`` / ``--flag`` -> ``key`` / ``flag``; None for anything else."""
    m = re.match(r"^--([A-Za-z_][\w-]*)(=|$)", arg)
    return m.group(1) if m else None


def path_candidates(args):
    """Repository paths among a command's arguments (also inside ``--key=value`` and ``[a,b]`` values)."""
    out = []
    for arg in args:
        value = arg.split("=", 1)[1] if arg.startswith("--") and "=" in arg else arg
        for piece in re.split(r"[\[\],{} ]+", value):
            piece = piece.strip("'\"")
            if not piece or piece.startswith(NOT_REPO) or any(c in piece for c in "*<>"):
                continue
            if piece.startswith(REPO_PREFIXES) or re.search(r"\.(py|yaml|sh)$", piece):
                out.append(piece)
    return out


# ---- what the scripts accept ----------------------------------------------------------------

def _run_help(argv):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    proc = subprocess.run([sys.executable] + argv + ["--help"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=180)
    return proc.stdout + proc.stderr


@functools.lru_cache(maxsize=None)
def script_help(script, subcommand=None):
    """The ``--help`` text of a script (of one of its subcommands), from this checkout's kd_brain."""
    return _run_help([script] + ([subcommand] if subcommand else []))


@functools.lru_cache(maxsize=None)
def yaml_keys(path):
    """Top-level keys of a (HyperPyYAML) config; its tags are kept, not built."""
    from ruamel.yaml import YAML

    with open(REPO / path, encoding="utf-8") as f:
        return frozenset(YAML(typ="rt", pure=True).load(f) or {})


@functools.lru_cache(maxsize=None)
def config_keys():
    """Top-level keys of every config in hparams/ (what run.py forwards to its stages)."""
    keys = set()
    for p in sorted((REPO / "hparams").glob("*.yaml")):
        if p.name not in NOT_CONFIGS:
            keys |= yaml_keys(f"hparams/{p.name}")
    return frozenset(keys)


def help_accepts(help_text, name):
    """Whether a script's help text names ``--name`` (argparse), or ``name`` when the script has no
    argparse parser (its help is its docstring, e.g. tune_lm.py's list of decoding keys)."""
    if "usage:" in help_text:
        return re.search(rf"(?<![\w-])--{re.escape(name)}(?![\w-])", help_text) is not None
    return re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", help_text) is not None


def subcommands(help_text):
    """The subcommands an argparse usage line offers (``{musan,rirs_noises}``)."""
    m = re.search(r"\{([\w,-]+)\}", help_text.split("options:")[0])
    return m.group(1).split(",") if m else []


# ---- the checks ---------------------------------------------------------------------------------

def check_invocation(doc, cmd, script, args):
    """Problems (messages) of one script invocation in ``doc``."""
    where = f"{doc}: `{cmd}`"
    if script is None:  # python3 -m module: only its paths
        return [f"{where}: {p} does not exist" for p in path_candidates(args) if not (REPO / p).exists()]
    if script.startswith(NOT_REPO):
        return []
    problems = [] if (REPO / script).is_file() else [f"{where}: script {script} does not exist"]
    problems += [f"{where}: {p} does not exist" for p in path_candidates(args) if not (REPO / p).exists()]
    if problems or not script.startswith("recipes/") or not script.endswith(".py"):
        return problems  # options are checked for the recipe's Python scripts only
    names = [(a, option_name(a)) for a in args if option_name(a)]
    if not names:
        return []
    base = os.path.basename(script)
    if base in YAML_SCRIPTS:
        yamls = [a for a in args if a.endswith(".yaml") and not a.startswith("--")]
        if not yamls:
            return [f"{where}: no YAML config given to {base}"]
        keys = set().union(*(yaml_keys(y) for y in yamls)) | RUN_OPTS
        return [f"{where}: option {a.split('=')[0]} is not a top-level key of {', '.join(yamls)} "
                f"nor a SpeechBrain run option" for a, n in names if n not in keys]
    text = script_help(script)
    subs = [a for a in args if a in subcommands(text)]
    texts = [text] + [script_help(script, s) for s in subs]
    extra = (config_keys() | RUN_OPTS) if base == "run.py" else set()
    bad = [a for a, n in names if n not in extra and not any(help_accepts(t, n) for t in texts)]
    what = "its --help" + (" nor a config key of hparams/ nor a SpeechBrain run option" if base == "run.py" else "")
    return [f"{where}: option {a.split('=')[0]} is not in {what}" for a in bad]


def module_exists(dotted):
    """Whether ``kd_brain.a.b[.Name]`` resolves to a package, a module, or a name its package defines."""
    parts = dotted.split(".")
    cur = REPO / parts[0]
    for i, part in enumerate(parts[1:], 1):
        if (cur / part).is_dir():
            cur = cur / part
        elif (cur / f"{part}.py").is_file():
            return True  # what follows is an attribute of the module
        else:
            init = cur / "__init__.py"
            return i > 1 and init.is_file() and re.search(rf"\b{re.escape(part)}\b", init.read_text()) is not None
    return True


def inline_problems(doc, text):
    """Inline code naming a file or module of the repository that does not exist."""
    prose = re.sub(r"^\s*```.*?^\s*```\s*$", "", text, flags=re.S | re.M)
    problems = []
    for span in re.findall(r"`([^`\n]+)`", prose):
        for path in re.findall(r"(?<![\w./-])((?:recipes/KD-Noise|hparams|kd_brain)/[\w./-]*)", span):
            path = path.rstrip(".,;:")
            if not (REPO / path).exists():
                problems.append(f"{doc}: inline `{span}` names {path}, which does not exist")
        for dotted in re.findall(r"(?<![\w./-])(kd_brain(?:\.\w+)+)", span):
            if not module_exists(dotted):
                problems.append(f"{doc}: inline `{span}` names {dotted}, which does not exist")
    return problems


def link_problems(doc, text):
    """Relative markdown links (documents, pictures) that point at nothing."""
    base = (REPO / doc).parent
    problems = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"^[a-z]+:|^#", target):
            continue
        path = target.split("#", 1)[0]
        if path and not (base / path).exists():
            problems.append(f"{doc}: link ({target}) points at nothing")
    return problems


def doc_problems(doc, text):
    """Every problem of one README's commands and inline paths."""
    problems = []
    for line, cmd in command_lines(text):
        try:
            calls = invocations(cmd)
        except ValueError as e:
            problems.append(f"{doc}:{line}: `{cmd}`: cannot be parsed as a shell command ({e})")
            continue
        for _, script, args in calls:
            problems += [p.replace(f"{doc}:", f"{doc}:{line}:", 1) for p in check_invocation(doc, cmd, script, args)]
    return problems + inline_problems(doc, text)


def prefetch_help(texts):
    """Runs the --help of every recipe script the (markdown) texts give options to, 4 at a time."""
    wanted = set()
    for text in texts:
        for _, cmd in command_lines(text):
            try:
                calls = invocations(cmd)
            except ValueError:
                continue
            for _, script, args in calls:
                if (script and script.startswith("recipes/") and script.endswith(".py")
                        and not script.endswith(YAML_SCRIPTS) and (REPO / script).is_file()
                        and any(option_name(a) for a in args)):
                    wanted.add(script)
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(script_help, sorted(wanted)))
        list(pool.map(lambda s: script_help(*s), sorted({(w, sub) for w in wanted for sub in subcommands(script_help(w))
                                                          if any(sub in t for t in texts)})))


# ---- tests ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("doc", READMES)
def test_readme_commands_scripts_options_and_paths_exist(doc):
    text = (REPO / doc).read_text()
    prefetch_help([text])
    assert command_lines(text), f"{doc}: no commands found"
    problems = doc_problems(doc, text)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("doc", DOCS)
def test_document_links_resolve(doc):
    if not (REPO / doc).is_file():
        pytest.fail(f"{doc} is missing")
    problems = link_problems(doc, (REPO / doc).read_text())
    assert not problems, "\n".join(problems)


def test_the_first_two_blocks_are_the_quick_start():
    """README.md opens with the title and the two set-up commands, as the CI runs the second."""
    blocks = code_blocks((REPO / "README.md").read_text())
    assert [b[2] for b in blocks[:2]] == [["bash recipes/KD-Noise/setup.sh && python3 recipes/KD-Noise/run.py"],
                                           ["bash recipes/KD-Noise/setup.sh && python3 -m pytest -q"]]
    assert (REPO / "README.md").read_text().startswith("# KD-Noise\n")


def test_the_check_catches_what_it_should():
    """Each kind of mistake in a (made-up) README gives a message naming the document, command and option."""
    doc = "\n".join([
        "Run `recipes/KD-Noise/no_such_script.py` or `kd_brain.no_such_module`; `hparams/teacher.yaml` exists.",
        "```bash",
        "python3 recipes/KD-Noise/run.py --corpus synthetic --bogus_option=1",
        "python3 recipes/KD-Noise/train.py hparams/student.yaml --k=5 --not_a_key=2 --device=cpu",
        "torchrun --nproc_per_node=2 recipes/KD-Noise/extract.py hparams/extract.yaml --nbest=0 \\",
        "    --no_such_extract_key=1",
        "python3 recipes/KD-Noise/prepare_noise.py musan /data/musan exp/public --with-noise --no-such-flag",
        "python3 recipes/KD-Noise/missing.py --x=1 && bash recipes/KD-Noise/missing.sh",
        "python3 recipes/KD-Noise/prepare.py hparams/teacher.yaml hparams/nope.yaml",
        "```",
        "```console",
        "$ python3 recipes/KD-Noise/compare.py exp/synthetic teacher student --conditions dev --nope",
        "WER --not_a_command_line_option",
        "```",
    ])
    prefetch_help([doc])
    problems = "\n".join(doc_problems("FAKE.md", doc))
    for expected in ["FAKE.md:3: `python3 recipes/KD-Noise/run.py --corpus synthetic --bogus_option=1`: "
                     "option --bogus_option is not in its --help",
                     "option --not_a_key is not a top-level key of hparams/student.yaml",
                     "option --no_such_extract_key is not a top-level key of hparams/extract.yaml",
                     "option --no-such-flag is not in its --help",
                     "script recipes/KD-Noise/missing.py does not exist",
                     "script recipes/KD-Noise/missing.sh does not exist",
                     "hparams/nope.yaml does not exist",
                     "option --nope is not in its --help",
                     "names recipes/KD-Noise/no_such_script.py, which does not exist",
                     "names kd_brain.no_such_module, which does not exist"]:
        assert expected in problems, f"not caught: {expected}\n{problems}"
    for fine in ["option --corpus ", "option --k ", "option --device ", "option --nbest ", "option --with-noise ",
                 "option --conditions ", "not_a_command_line", "names hparams/teacher.yaml,"]:
        assert fine not in problems, f"wrongly flagged: {fine}\n{problems}"


def test_every_result_file_is_linked_from_results_md():
    """A report or picture under recipes/KD-Noise/results/ that RESULTS.md does not link is a stale file."""
    text = (REPO / "RESULTS.md").read_text(encoding="utf-8")
    linked = set(re.findall(r"\]\((recipes/KD-Noise/results/[^)#\s]+)", text))
    files = {str(p.relative_to(REPO)) for p in (REPO / "recipes" / "KD-Noise" / "results").iterdir()}
    assert files <= linked, f"not linked from RESULTS.md: {sorted(files - linked)}"
