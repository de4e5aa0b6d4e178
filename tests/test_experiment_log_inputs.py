"""experiment-log edits only what is its own and reads only what it is given for: it replaces text
between one well-formed pair of its markers and refuses any other arrangement, leaving the file
as it was; a run folder or a garbage summary.json where a sweep is expected is one line naming it."""

import orjson
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from conftest import examples
from pipelines.experiments import experiment_log
from pipelines.experiments.experiment_log import END, START, main, read_log, write_log
from pipelines.training.storage.metrics import MetricsLog


def sweep_of_one_run(tmp_path):
    sweep = tmp_path / "sweep"
    run = sweep / "a"
    run.mkdir(parents=True)
    log = MetricsLog(run)
    for step in (10, 20):
        log.write({"step": step, "tokens": step * 8, "wall": step / 10, "train_loss": 3.0, "val_loss": 3.5})
    log.close()
    return sweep


@pytest.mark.parametrize("text", [
    f"mine\n{START}\nmy own notes, no end marker\n",  # a stray start: the notes after it are the user's
    f"{END}\nmine\n{START}\n",  # end before start
    f"{START}\na\n{END}\n{START}\nb\n{END}\n",  # two sections: which one?
    f"mine\n{END}\n",  # an end alone
])
def test_markers_that_are_not_one_pair_in_order_are_refused_and_the_file_kept(tmp_path, text, capsys):
    out = tmp_path / "NOTES.md"
    out.write_text(text)
    sweep = sweep_of_one_run(tmp_path)
    with pytest.raises(SystemExit) as refused:
        main([str(sweep), "--out", str(out), "--figures", str(tmp_path / "figures")])
    assert refused.value.code == 2 and str(out) in str(refused.value) and "markers" in str(refused.value)
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert out.read_text() == text
    assert not (tmp_path / "figures").exists()  # refused before any work


TEXT = st.text(st.characters(blacklist_categories=("Cs",)))  # what a UTF-8 file can hold


@given(before=TEXT, after=TEXT, old=TEXT)
@settings(max_examples=examples(50), deadline=None)
def test_a_well_formed_pair_is_replaced_and_everything_around_it_kept(tmp_path_factory, before, after, old):
    assume(not any(marker in part for part in (before, after, old) for marker in (START, END)))
    out = tmp_path_factory.mktemp("log") / "NOTES.md"
    out.write_bytes(f"{before}{START}{old}{END}{after}".encode("utf-8", "surrogatepass"))
    write_log(out, "NEW")
    text = out.read_bytes().decode("utf-8", "surrogatepass")
    assert text.startswith(before + START) and text.endswith(END + after) and "NEW" in text
    assert read_log(out) == text  # and the result is well formed again


def test_a_file_without_markers_gets_the_section_appended(tmp_path):
    out = tmp_path / "NOTES.md"
    out.write_text("# Mine\n")
    write_log(out, "NEW")
    text = out.read_text()
    assert text.startswith("# Mine\n") and text.index(START) < text.index("NEW") < text.index(END) and text.rstrip().endswith(END)


def test_a_run_folder_given_as_a_sweep_is_one_line_naming_it(tmp_path, capsys):
    run = sweep_of_one_run(tmp_path) / "a"
    (run / "summary.json").write_bytes(orjson.dumps({"status": "completed", "step": 20}))
    with pytest.raises(SystemExit, match=rf"^error: {run} is a run directory, not a sweep directory"):
        main([str(run), "--out", str(tmp_path / "log.md")])
    assert not (tmp_path / "log.md").exists()


@pytest.mark.parametrize("content", [b"{not json", b'{"status": "completed"}', b'[{"name": 3}]', b'[{"name": "../../etc"}]'])
def test_a_garbage_sweep_summary_is_one_line_naming_the_file(tmp_path, content):
    sweep = sweep_of_one_run(tmp_path)
    (sweep / "summary.json").write_bytes(content)
    with pytest.raises(SystemExit, match=r"^error: .*summary\.json|^error: variant name '\.\./\.\./etc'"):
        main([str(sweep), "--out", str(tmp_path / "log.md")])
    assert not (tmp_path / "log.md").exists()


def test_a_missing_sweep_is_one_line(tmp_path):
    with pytest.raises(SystemExit, match=r"^error: .*nowhere is not a folder"):
        main([str(tmp_path / "nowhere"), "--out", str(tmp_path / "log.md")])


def test_by_default_it_writes_under_runs_not_into_the_projects_docs():
    args = experiment_log.parser().parse_args(["runs/study/lr"])
    assert args.out.parts[0] == "runs" and args.figures.parts[0] == "runs"
