"""Repository invariants: every YAML loads, the README's commands name files that exist, CI runs them."""

import re
import shlex

import pytest
from hyperpyyaml import load_hyperpyyaml

from kd_brain.pipeline import config
from tests.conftest import REPO

INCLUDES = ("model.yaml",)  # sections shared by the configs, not configs themselves
OVERRIDES = ("large.yaml",)  # per-stage overrides of other configs (run.py --corpus librispeech)
YAMLS = sorted(p for p in (REPO / "hparams").glob("*.yaml") if p.name not in INCLUDES + OVERRIDES)


def test_large_overrides_name_keys_their_configs_have():
    """A misspelt key in hparams/large.yaml would silently change nothing: each must exist."""
    import yaml

    sections = yaml.safe_load((REPO / "hparams" / "large.yaml").read_text())
    assert set(sections) == {"student", "extract"}
    for section, keys in sections.items():
        top = set(config.top_level(REPO / "hparams" / f"{section}.yaml"))
        assert set(keys) <= top, (section, set(keys) - top)


@pytest.mark.parametrize("path", YAMLS, ids=[p.name for p in YAMLS])
def test_every_yaml_loads(path):
    with open(path) as f:
        hp = load_hyperpyyaml(f)
    assert "model_name" in hp and "output_folder" in hp


def test_model_is_written_once_and_student_matches_teachers():
    """Every config builds its model from hparams/model.yaml, so a student can start from its teacher."""
    shapes = {}
    for path in YAMLS:
        text = path.read_text()
        if "extract" in path.name:  # no model: it loads the teacher's saved config
            continue
        assert "!include:model.yaml" in text and "!new:kd_brain.model.conformer.CTCModel" not in text, path.name
        with open(path) as f:
            hp = load_hyperpyyaml(f)
        assert hp["modules"]["model"] is hp["model"] is hp["checkpointer"].recoverables["model"]
        shapes[path.name] = {k: tuple(v.shape) for k, v in hp["model"].state_dict().items()}
    for teacher in ("teacher.yaml", "teacher_bed.yaml"):
        assert shapes["student.yaml"] == shapes[teacher]


def readme_commands():
    """Lines of the README's shell code blocks (indented or fenced)."""
    cmds = []
    for readme in [REPO / "README.md", *REPO.glob("recipes/*/README.md")]:
        text = readme.read_text()
        for block in re.findall(r"```(?:bash|sh|shell)?\n(.*?)```", text, flags=re.S):
            cmds += [(readme, line.strip()) for line in block.splitlines() if line.strip() and not line.startswith("#")]
    return cmds


def test_readme_commands_name_existing_files():
    cmds = readme_commands()
    assert len(cmds) >= 2
    checked = 0
    for readme, cmd in cmds:
        for token in shlex.split(cmd.replace("&&", " ").replace("|", " ")):
            token = token.split("=", 1)[-1]
            # exp/ holds what the main job writes (its manifests, model folders), not files of the repository
            if re.search(r"\.(py|yaml|sh|md|csv)$", token) and not token.startswith(("/", "$", "<", "exp/")):
                where = REPO / token
                assert where.exists() or (REPO.parent / token).exists(), f"{readme.name}: `{cmd}` names {token}"
                checked += 1
    assert checked >= 3


def test_ci_runs_the_readme_test_command():
    first = REPO.joinpath("README.md").read_text().split("```")[3].strip().splitlines()  # second code block
    test_cmd = [line for line in first if "pytest" in line][0].strip()
    assert test_cmd in REPO.joinpath(".ci", "run").read_text()
