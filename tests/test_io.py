import json
import os

import pytest

from srlm.io import DataError, Generated, atomic_dir, atomic_write_text, read_jsonl, write_json, write_jsonl


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    f = tmp_path / "out.txt"
    atomic_write_text(f, "old")

    with pytest.raises(TypeError):
        atomic_write_text(f, 123)  # type: ignore[arg-type]
    assert f.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]  # no temp file left


def test_atomic_dir_replaces_only_on_success(tmp_path):
    d = tmp_path / "model"
    with atomic_dir(d) as tmp:
        (tmp / "w").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic_dir(d) as tmp:
            (tmp / "w").write_text("2")
            raise RuntimeError("killed")
    assert (d / "w").read_text() == "1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


SCHEMA = {"id": str, "instruction": str}


@pytest.mark.parametrize(
    "content,needle",
    [
        (b'{"id": "a", "instruction": "x"}\n{"id": "b", "instruction": \n', "data.jsonl:2: malformed JSON"),
        (b'{"id": "a"}\n', "data.jsonl:1: missing field 'instruction'"),
        (b'{"id": "a", "instruction": "  "}\n', "data.jsonl:1: field 'instruction' is empty"),
        (b'{"id": "a", "instruction": 3}\n', "data.jsonl:1: field 'instruction' should be str"),
        (b'{"id": "a", "instruction": "x"}\n{"id": "a", "instruction": "y"}\n', "data.jsonl:2: duplicate id 'a'"),
        (b'{"id": "a", "instruction": "x"}\n{"id": "b", "instruction": "\xff"}\n', "data.jsonl:2: not valid UTF-8"),
        (b"", "data.jsonl: contains no records"),
        (b"[1, 2]\n", "data.jsonl:1: expected a JSON object"),
    ],
)
def test_read_jsonl_errors_name_file_and_line(tmp_path, content, needle):
    f = tmp_path / "data.jsonl"
    f.write_bytes(content)
    with pytest.raises(DataError) as e:
        read_jsonl(f, SCHEMA)
    assert needle in str(e.value)


def test_a_model_may_answer_with_nothing_but_other_text_fields_must_hold_something(tmp_path):
    # An empty answer is a model's output (it ended its turn at once), counted by the stages that write it;
    # the stages that read it must take it (a default run's M3 once did, and the report refused it).
    from srlm import artifacts

    f = tmp_path / "follow.jsonl"
    row = {"id": "v1", "instruction": "Answer in 3 words.", "output": "", "strict": [False], "loose": [False]}
    write_jsonl(f, [row])
    assert artifacts.Artifact(f, artifacts.FOLLOWED).read() == [row]
    write_jsonl(f, [row | {"instruction": " "}])
    with pytest.raises(DataError, match="field 'instruction' is empty"):
        artifacts.Artifact(f, artifacts.FOLLOWED).read()
    write_jsonl(f, [row | {"output": 3}])
    with pytest.raises(DataError, match="field 'output' should be str, got int"):
        read_jsonl(f, {"output": Generated})


def test_roundtrip(tmp_path):
    rows = [{"id": "a", "instruction": "é"}, {"id": "b", "instruction": "x"}]
    write_jsonl(tmp_path / "x.jsonl", rows)
    assert read_jsonl(tmp_path / "x.jsonl", SCHEMA) == rows


def _dead_pid() -> int:
    import subprocess
    import sys

    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_a_killed_writers_temporaries_are_removed_by_the_next_write(tmp_path):
    f = tmp_path / "out.jsonl"
    dead = _dead_pid()
    (tmp_path / f".out.jsonl.tmp-{dead}-abc").write_text("half a reco")  # SIGKILL mid-write
    live = tmp_path / f".out.jsonl.tmp-{os.getpid()}-xyz"  # a writer still at work
    live.write_text("")
    write_jsonl(f, [{"a": 1}])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["out.jsonl", live.name])


def test_a_kill_between_the_renames_of_atomic_dir_keeps_the_previous_output(tmp_path):
    d = tmp_path / "model"
    old = tmp_path / f".model.tmp-{_dead_pid()}-old"  # killed after moving the old dir away
    old.mkdir()
    (old / "w").write_text("previous")
    with pytest.raises(RuntimeError):
        with atomic_dir(d):
            raise RuntimeError("fails before the new one is ready")
    assert (d / "w").read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_a_full_disk_error_names_the_file(tmp_path, monkeypatch):
    import errno

    def full(fd, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError) as e:
        atomic_write_text(tmp_path / "out.txt", "x")
    assert e.value.filename == str(tmp_path / "out.txt")
    assert list(tmp_path.iterdir()) == []


def test_write_json_writes_undefined_values_as_null_at_any_depth(tmp_path):
    f = tmp_path / "m.json"
    write_json(f, {"kendall": float("nan"), "by_seed": [0.5, float("nan")], "inner": {"rho": float("nan"), "n": 3}})
    text = f.read_text()
    assert "NaN" not in text  # Python's NaN literal is not JSON
    assert json.loads(text) == {"by_seed": [0.5, None], "inner": {"n": 3, "rho": None}, "kendall": None}
