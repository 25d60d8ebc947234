"""A model folder's ``dungeon.json``: the story format it was trained on, and the sampling
settings it recommends for play.

``dungeon finetune`` writes it, ``scripts/ship_adapter.py`` and ``dungeon export`` carry it
over, and ``dungeon.models.load_generator`` reads it: a format mismatch is warned about, and
the recommended sampling (``"sampling": {"temperature": 0.5}``) becomes the generator's
defaults under whatever the player chose (dungeon.config.sampling_in_effect). No torch here.
"""

from __future__ import annotations

import json
import logging
from dataclasses import fields
from pathlib import Path

from dungeon.format import FORMAT_NAME, FORMAT_VERSION
from dungeon.generator import SamplingSettings

log = logging.getLogger(__name__)

DUNGEON_JSON = "dungeon.json"


def check_dungeon_json(folder: Path) -> dict | None:
    """Read a folder's dungeon.json (written by scripts/finetune.py); warn on a format mismatch."""
    path = Path(folder) / DUNGEON_JSON
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        log.warning("%s cannot be read (%s); the story format is not checked", path, err)
        return None
    fmt = info.get("format") or {}
    if fmt.get("name") != FORMAT_NAME or fmt.get("version") != FORMAT_VERSION:
        log.warning(
            "%s was trained on story format %s v%s but this dungeon uses %s v%s; "
            "responses may not follow the player's actions well",
            folder,
            fmt.get("name"),
            fmt.get("version"),
            FORMAT_NAME,
            FORMAT_VERSION,
        )
    return info


def check_sampling(data: object) -> tuple[dict, list[str]]:
    """A model's recommended sampling (dungeon.json's ``"sampling"``) checked key by key with
    SamplingSettings' own checks: the keys that pass, and one line per key that does not."""
    if not isinstance(data, dict):
        return {}, [f"must be a mapping of settings to values, got {data!r}"]
    kinds = {f.name: str(f.type) for f in fields(SamplingSettings)}
    good, problems = {}, []
    for key, value in data.items():
        kind = kinds.get(key)
        if kind is None:
            problems.append(f"no setting {key!r}; settings are: {', '.join(kinds)}")
            continue
        wants = bool if kind == "bool" else int if kind == "int" else (int, float)
        if not isinstance(value, wants) or (kind != "bool" and isinstance(value, bool)):
            problems.append(f"{key} takes a {kind} value, got {value!r}")
            continue
        try:
            SamplingSettings().updated({key: value})
        except ValueError as err:
            problems.append(str(err))
            continue
        good[key] = value
    try:
        SamplingSettings().updated(good)
    except ValueError as err:
        return {}, [*problems, str(err)]
    return good, problems


def recommended_sampling(info: dict, where: Path) -> dict:
    """The sampling settings a model's dungeon.json recommends ({} for none); a key that fails
    SamplingSettings' checks is left out with a warning naming the file and the key."""
    if "sampling" not in info:
        return {}
    good, problems = check_sampling(info["sampling"])
    for problem in problems:
        log.warning('%s: "sampling": %s (ignored)', Path(where) / DUNGEON_JSON, problem)
    return good
