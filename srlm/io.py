"""Atomic writes and validated JSONL reading.

Every stage output goes through here: written to a temporary sibling, then renamed,
so an interrupted stage never leaves a half-written file where DVC expects an output.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator


class DataError(ValueError):
    """Bad input data; the message names the file, the record and what is wrong."""


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(path), dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.filename is None:
            e.filename = str(path)  # a full disk fails in write(), which names no file
        raise


def write_jsonl(path: str | os.PathLike, records: Iterable[dict]) -> int:
    lines = [json.dumps(r, ensure_ascii=False) for r in records]
    atomic_write_text(path, "".join(line + "\n" for line in lines))
    return len(lines)


def no_nan(obj: Any) -> Any:
    """`obj` with every NaN (an undefined value, e.g. a correlation over constant scores) as None, in nested
    dicts and lists too: JSON has no NaN, and Python's `NaN` literal breaks other readers."""
    if isinstance(obj, dict):
        return {k: no_nan(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [no_nan(v) for v in obj]
    return None if isinstance(obj, float) and obj != obj else obj


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Indented, sorted keys, NaN written as null (`no_nan`)."""
    atomic_write_text(path, json.dumps(no_nan(obj), indent=2, ensure_ascii=False, sort_keys=True) + "\n")


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory that replaces `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(path), dir=path.parent))
    old = path.with_name(f".{path.name}.tmp-{os.getpid()}-old")
    try:
        yield tmp
        if path.exists():
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not path.exists():  # interrupted between the two renames
            os.replace(old, path)
        raise


def _tmp_prefix(path: Path) -> str:
    # The writer's pid is in the name, so a later writer can tell a killed writer's leftovers.
    return f".{path.name}.tmp-{os.getpid()}-"


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove the temporaries of `path` left by writers that were killed (SIGKILL skips every
    cleanup). Those of a live process are kept: it may still be writing them."""
    path = Path(path)
    removed = []
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.tmp-*"):
        pid = tmp.name[len(f".{path.name}.tmp-") :].split("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            if tmp.name.endswith("-old") and not path.exists():
                os.replace(tmp, path)  # killed between the two renames of atomic_dir: put the old one back
                continue
            shutil.rmtree(tmp) if tmp.is_dir() and not tmp.is_symlink() else tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


# A schema type: text a model wrote, a string that may be empty (a model can end its turn at once). Every
# other string field must hold something. A tuple, as schemas already allow, so the type check takes it as is.
Generated = (str,)


def read_jsonl(
    path: str | os.PathLike, schema: dict[str, type | tuple] | None = None, allow_empty: bool = False
) -> list[dict]:
    """Read a JSONL file; check that each record has the `schema` fields with the right types.

    Errors name the file and the 1-based line number.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
    records = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{lineno}: malformed JSON ({e.msg})") from None
        if not isinstance(rec, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(rec).__name__}")
        for field, typ in (schema or {}).items():
            if field not in rec:
                raise DataError(f"{path}:{lineno}: missing field {field!r}")
            if not isinstance(rec[field], typ) or isinstance(rec[field], bool) and typ is int:
                raise DataError(
                    f"{path}:{lineno}: field {field!r} should be {_tname(typ)}, got {type(rec[field]).__name__}"
                )
            if isinstance(rec[field], str) and typ is not Generated and not rec[field].strip():
                raise DataError(f"{path}:{lineno}: field {field!r} is empty")
        rec["_line"] = lineno
        records.append(rec)
    if not records and not allow_empty:
        raise DataError(f"{path}: contains no records")
    check_unique_ids(records, path)
    for r in records:
        r.pop("_line")
    return records


def check_unique_ids(records: list[dict], path: str | os.PathLike) -> None:
    seen: dict[str, int] = {}
    for r in records:
        if "id" not in r:
            continue
        if r["id"] in seen:
            raise DataError(f"{path}:{r.get('_line', '?')}: duplicate id {r['id']!r} (first at line {seen[r['id']]})")
        seen[r["id"]] = r.get("_line", "?")


def _tname(typ) -> str:
    if isinstance(typ, tuple):
        return " or ".join(t.__name__ for t in typ)
    return typ.__name__


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
