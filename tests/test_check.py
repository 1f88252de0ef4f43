"""params.yaml is checked against its schema before anything runs (pipeline/schema.py, pipeline.params.load_params,
python -m pipeline.check), files under data/raw/ are tracked with no edit of dvc.yaml, an outside path is added by
python -m pipeline.track, and the README's parameter table is the one the schema makes. No model is loaded."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import yaml

from pipeline import check, track
from pipeline.params import InputError, load_params, parse_params, problems, require_tracked, run_main
from tests.conftest import ROOT

SHIPPED = (ROOT / "params.yaml").read_text(encoding="utf-8")


def edited(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, old  # the edit must hit the shipped file, or the test would test nothing
    return text.replace(old, new)


def found(text: str, sections=None, root=ROOT) -> list[str]:
    return problems(parse_params(text), sections, root, text)


def line_of(text: str, fragment: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if fragment in line)


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """A copy of the project's params.yaml, dvc.yaml and data/raw/, as the working directory."""
    for name in ["params.yaml", "dvc.yaml"]:
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "data/raw", tmp_path / "data/raw")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_shipped_params_pass_whole_and_section_by_section(monkeypatch):
    monkeypatch.chdir(ROOT)
    assert check.check(ROOT / "params.yaml") == []
    for section in ["data", "model", "prepare", "train", "passages", "encode", "evaluate", "index"]:
        assert load_params(section, ROOT / "params.yaml") == yaml.safe_load(SHIPPED)[section]  # as written


def test_a_misspelt_key_names_its_line_and_the_nearest_valid_one():
    text = edited(SHIPPED, "  learning_rate: 5.0e-5", "  learnig_rate: 5.0e-5")
    assert found(text) == [f"params.yaml:{line_of(text, 'learnig_rate')}: train.learnig_rate: unknown key; "
                           "did you mean learning_rate?"]
    text = edited(SHIPPED, "\ntrain:\n", "\ntrian:\n")
    assert any("trian: unknown key; did you mean train?" in p for p in found(text, ["train"]))


def test_a_wrong_type_and_an_out_of_range_value_name_the_key_path_and_every_problem_is_listed():
    text = edited(SHIPPED, "  epochs: 2 ", "  epochs: two ")
    text = edited(text, "    p_lowercase: 0.7", "    p_lowercase: 1.7")
    text = edited(text, "  miner: model", "  miner: bert")
    listed = found(text)
    assert len(listed) == 3
    assert listed[0].startswith(f"params.yaml:{line_of(text, 'miner: bert')}: prepare.negatives.miner: ")
    assert "'bert'" in listed[0] and "'bm25'" in listed[0]
    assert listed[1].startswith(f"params.yaml:{line_of(text, 'p_lowercase')}: prepare.user_questions.p_lowercase: ")
    assert "less than or equal to 1" in listed[1]
    assert listed[2].startswith(f"params.yaml:{line_of(text, 'epochs: two')}: train.epochs: ")
    # a stage reading one section sees that section's problems only
    assert found(text, ["train"]) == [listed[2]]
    assert found(text, ["encode"]) == []


def test_broken_yaml_names_its_line(project):
    text = edited(SHIPPED, "  nprobe: 32", "  nprobe: [32")
    (project / "params.yaml").write_text(text)
    with pytest.raises(InputError, match=r"^params.yaml:\d+: not valid YAML"):
        load_params("index")
    assert check.check()[0].startswith("params.yaml:")


def test_a_missing_data_file_names_its_key(project):
    (project / "params.yaml").write_text(edited(SHIPPED, "faq: [data/raw/faq.csv]", "faq: [data/raw/faqs.csv]"))
    with pytest.raises(InputError, match=r"params.yaml:\d+: data.faq\[0\]: data/raw/faqs.csv does not exist"):
        load_params("data")
    assert load_params("train")  # another section: not this stage's problem
    assert load_params()["data"]["faq"] == ["data/raw/faqs.csv"]  # read whole, to be edited: files not looked at


def test_a_guard_that_is_not_a_held_out_set_is_caught_before_training():
    text = edited(SHIPPED, "guards: [pet_owners]", "guards: [pet_owner]")
    listed = found(text)  # the whole file: the evaluate stage itself does not read data.testsets
    assert len(listed) == 1 and "evaluate.guards[0]: 'pet_owner' is not a held-out set" in listed[0]


def test_a_stage_with_a_typo_exits_1_before_doing_work(project, caplog):
    from pipeline.stages import passages

    (project / "params.yaml").write_text(edited(SHIPPED, "  strategy: section", "  stratgy: section"))
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as exit_:
        run_main(passages.main)
    assert exit_.value.code == 1
    assert "passages.stratgy: unknown key; did you mean strategy?" in caplog.text
    assert "Traceback" not in caplog.text
    assert not (project / "data/passages.jsonl").exists()


def test_own_files_under_data_raw_are_tracked_without_editing_dvc_yaml(project):
    (project / "data/raw/support").mkdir()
    shutil.copy(project / "data/raw/faq.csv", project / "data/raw/support/faq.csv")
    shutil.copytree(project / "data/raw/kb", project / "data/raw/handbook")
    params = yaml.safe_load(SHIPPED)
    params["data"].update(faq=["data/raw/support/faq.csv"], kb="data/raw/handbook")
    stages = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    assert track.untracked(params, stages) == []
    params["data"]["faq"] = [str(ROOT / "data/raw/faq.csv")]  # outside this project: both readers must track it
    assert sorted(stage for stage, *_ in track.untracked(params, stages)) == ["passages", "prepare"]


def test_track_adds_an_outside_path_to_the_stages_reading_it_and_keeps_the_comments(project, tmp_path_factory):
    outside = tmp_path_factory.mktemp("elsewhere") / "faq.csv"
    shutil.copy(ROOT / "data/raw/faq.csv", outside)
    (project / "params.yaml").write_text(edited(SHIPPED, "faq: [data/raw/faq.csv]", f"faq: [{outside}]"))
    before = (project / "dvc.yaml").read_text()
    with pytest.raises(InputError, match="not a dependency of stage 'passages'"):
        require_tracked("passages", {"data.faq": [str(outside)]})  # what the stage says when it starts
    assert any("not a dependency of stage 'prepare'" in p for p in check.check())

    track.main([str(outside)])
    after = (project / "dvc.yaml").read_text()
    old, new = yaml.safe_load(before)["stages"], yaml.safe_load(after)["stages"]
    assert [s for s in old if old[s] != new[s]] == ["passages", "prepare"]
    for stage in ["passages", "prepare"]:
        assert new[stage]["deps"] == old[stage]["deps"] + [str(outside)]
    added = [line for line in after.splitlines() if line not in before.splitlines()]
    assert added == [f"      - {outside}"] * 2  # only the two lines: every comment and line of dvc.yaml kept
    assert check.check() == []
    track.main([str(outside)])  # tracked already: nothing changes
    assert (project / "dvc.yaml").read_text() == after


def test_track_refuses_a_path_params_does_not_name(project):
    with pytest.raises(InputError, match="params.yaml names no /nowhere/faq.csv"):
        track.main(["/nowhere/faq.csv"])


def test_the_readme_parameter_table_is_the_one_the_schema_makes():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("\n## Parameters\n"):]
    section = section[:section.index("\n## ", 1)]
    shown = "".join(line + "\n" for line in section.splitlines() if line.startswith("|"))
    assert shown == check.table(ROOT / "params.yaml"), "regenerate it: python -m pipeline.check --table"
