"""Stories in rows: JSONL, CSV/TSV, and the rows of a ``datasets`` dataset.

A row holds one story, either as text (a ``text`` column, or the column ``--text-column``
names), read like a text file (dungeon.corpus.readers: turns or prose, actions normalised), or
as ``premise`` and ``turns`` (each turn ``[action, response]``, ``[action, response, mode]`` or
``{"action", "response", "mode"}``). An optional ``name`` (or ``title``) column names the
story. Every bad row is reported as ``file:line`` (JSONL, CSV) or ``label row N``.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from pathlib import Path

from dungeon.actions import make_action
from dungeon.corpus.readers import (
    ReadOptions,
    StoryText,
    decode_bytes,
    decode_file,
    story_from_text,
)
from dungeon.format import MODES, render_story


def story_from_row(
    row: dict, name: str, where: str, options: ReadOptions
) -> tuple[StoryText | None, list[str]]:
    """One story from a row's text column, or from its ``premise`` and ``turns``."""
    label = row.get("name") or row.get("title")
    name = str(label) if label not in (None, "") else name
    column = options.text_column
    if row.get(column) is not None:
        text = row[column]
        if not isinstance(text, str):
            return None, [f"{where}: {column!r} must be a string"]
        if not text.strip():
            return None, [f"{where}: {column!r} is empty"]
        return story_from_text(text, name, where, options)
    premise, turns = row.get("premise"), row.get("turns")
    if premise is None:
        return None, [f"{where}: needs a {column!r} field, or 'premise' and 'turns'"]
    if not isinstance(premise, str) or not premise.strip():
        return None, [f"{where}: 'premise' must be non-empty text"]
    rendered, actions, problems, changed = [], [], [], 0
    for i, turn in enumerate(turns or [], start=1):
        if isinstance(turn, dict):
            action, response = turn.get("action"), turn.get("response")
            mode = turn.get("mode") or "do"
        elif isinstance(turn, (list, tuple)) and len(turn) in (2, 3):
            action, response, mode = turn[0], turn[1], (turn[2] if len(turn) == 3 else "do")
        else:
            problems.append(f"{where}: turn {i} must be [action, response] or an object")
            continue
        if not isinstance(action, str) or not isinstance(response, str) or not response.strip():
            problems.append(f"{where}: turn {i} needs text for its action and response")
        elif mode not in MODES:
            problems.append(f"{where}: turn {i} has mode {mode!r}; use one of {', '.join(MODES)}")
        else:
            if mode in ("do", "say") and not options.keep_actions:
                made = make_action(action, "do")  # the action is stored as play renders it
                if made.mode != "continue":
                    changed += made.text != action
                    action, mode = made.text, made.mode
            rendered.append((action, mode, response))
            actions.append(action)
    if problems:
        return None, problems
    text = render_story(premise, rendered)
    kind = "turns" if rendered else "prose"
    return StoryText(name, text, name, kind=kind, actions=actions, changed=changed), []


def stories_from_rows(
    rows: Iterable[tuple[str, dict]], label: str, options: ReadOptions
) -> tuple[list[StoryText], list[str]]:
    """Stories of ``(where, row)`` pairs; names are ``label#N`` unless a row names itself."""
    stories, problems = [], []
    for n, (where, row) in enumerate(rows, start=1):
        story, errs = story_from_row(row, f"{label}#{n}", where, options)
        problems.extend(errs)
        if story is not None:
            stories.append(story)
    return stories, problems


def read_jsonl(path: Path, options: ReadOptions) -> tuple[list[StoryText], list[str]]:
    """A JSONL file, one story a line; every bad line is reported as ``file:line``."""
    try:
        data = path.read_bytes()
    except OSError as err:
        return [], [f"{path}: cannot be read ({err.strerror or err})"]
    if not data.strip():
        return [], [f"{path}: empty file"]
    rows, stories, problems = [], [], []
    for lineno, raw in enumerate(data.split(b"\n"), start=1):
        where = f"{path}:{lineno}"
        line, errs = decode_bytes(raw, where, options)
        if line is None:
            # decode_bytes counts lines within this one line: name the file's line instead
            problems.extend(e.replace(f"{where}:1:", f"{where}:") for e in errs)
            continue
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            problems.append(f"{where}: not valid JSON ({err.msg})")
            continue
        if not isinstance(row, dict):
            problems.append(f"{where}: each line must be a JSON object")
            continue
        rows.append(row)
        story, errs = story_from_row(row, f"{path.name}#{len(rows)}", where, options)
        problems.extend(errs)
        if story is not None:
            stories.append(story)
    if not problems and not stories:
        problems.append(f"{path}: no stories in this file")
    return stories, problems


def read_table(path: Path, options: ReadOptions) -> tuple[list[StoryText], list[str]]:
    """A CSV (or TSV: tab-separated) file with a header row; one story a row."""
    text, problems = decode_file(path, options)
    if text is None:
        return [], problems
    tsv = path.suffix.lower() in (".tsv", ".tab")
    delimiter = "\t" if tsv else ","
    csv.field_size_limit(2**31 - 1)  # a story is one long cell
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
        columns = reader.fieldnames or []
        column = options.text_column
        if column not in columns and not {"premise", "turns"} <= set(columns):
            found = ", ".join(repr(c) for c in columns) or "none"
            return [], [
                f"{path}: no {column!r} column (columns: {found}); name the story column "
                "with --text-column"
            ]
        rows = [(f"{path}:{reader.line_num}", dict(row)) for row in reader]
    except csv.Error as err:
        return [], [f"{path}: not a valid {'TSV' if tsv else 'CSV'} file ({err})"]
    for _, row in rows:
        if isinstance(row.get("turns"), str):  # turns as JSON in a cell
            try:
                row["turns"] = json.loads(row["turns"])
            except json.JSONDecodeError:
                row["turns"] = None
    stories, errs = stories_from_rows(rows, path.name, options)
    if not errs and not stories:
        errs = [f"{path}: no stories in this file"]
    return stories, errs


def read_dataset_rows(ds, label: str, options: ReadOptions) -> tuple[list[StoryText], list[str]]:
    """The stories of a ``datasets.Dataset`` (saved to disk, or from the hub)."""
    columns = set(ds.column_names)
    if options.text_column not in columns and not {"premise", "turns"} <= columns:
        found = ", ".join(repr(c) for c in sorted(columns)) or "none"
        return [], [
            f"{label}: needs a {options.text_column!r} column, or 'premise' and 'turns' columns "
            f"(columns: {found}); name the story column with --text-column"
        ]
    if len(ds) == 0:
        return [], [f"{label}: the dataset has no rows"]

    def rows():
        index = 0
        for batch in ds.iter(batch_size=1000):
            keys = list(batch)
            for j in range(len(batch[keys[0]])):
                yield f"{label} row {index}", {k: batch[k][j] for k in keys}
                index += 1

    return stories_from_rows(rows(), label, options)
