"""Suite loaders: each reads one benchmark's published on-disk format into `BenchItem`s.

    data = load_suite("siuo", Path("data/SIUO"))
    data.items, data.bad        # items to judge, and those that could not be read

Loaders never raise for a bad item (a malformed JSON line, a missing image, a missing field): the
item becomes a `BadItem`, listed in the results and never scored. They raise `UsageError` only
when the suite cannot be found at all (no such folder, no data file, a data file that is not
JSON); `load_suite` also when no item at all can be judged (the images were not downloaded).
What a file holds decides how it is read (a BOM, JSON lines in a .json, an array in a .jsonl).
Standard library only, so that `guard bench --help` stays instant.

Formats (field names as the publishers ship them; see guard/bench/README.md for the details):
- hazardworld: folders written by `guard world generate` (items.jsonl + images/), or a folder
  of such folders.
- ood-mmsafe: a local folder in the OOD-MMSafe item schema (the world writes exactly this).
- siuo: SIUO's siuo_gen.json + images/ (github.com/sinwang20/SIUO).
- mssbench: MSSBench's combined.json + chat/ + embodied/
  (huggingface.co/datasets/kzhou35/mssbench).
- vlsbench: VLSBench's data.json + imgs/ (huggingface.co/datasets/Foreshhh/vlsbench).
- safeagentbench: SafeAgentBench's dataset/*.jsonl (github.com/shengyin1224/SafeAgentBench),
  text only: each step plan is judged as a proposal without an image.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from guard.bench.items import NO_CATEGORY, BadItem, BenchItem, SuiteData, normalize_category
from guard.errors import UsageError

# The fields of the OOD-MMSafe item schema; anything else an item carries goes to `meta`.
OOD_MMSAFE_FIELDS = (
    "id", "image", "query", "category", "hazard", "consequence", "label", "reference_answer",
)
ITEM_FILES = ("items.jsonl", "data.jsonl", "items.json", "data.json")


# -- shared helpers --------------------------------------------------------------------------


def _text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


def _read_json(path: Path) -> Any:
    # utf-8-sig: a file saved with a byte-order mark (Windows editors) reads the same
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: not valid JSON ({exc})") from None


def _json_lines(path: Path) -> Iterator[tuple[str, Any, str | None]]:
    with path.open(encoding="utf-8-sig", errors="replace") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            source = f"{path.name}:{lineno}"
            try:
                yield source, json.loads(line), None
            except ValueError as exc:
                yield source, None, f"not valid JSON: {exc}"


def _is_json_lines(path: Path) -> bool:
    """Whether every non-blank line of `path` is a JSON value of its own (JSON lines under
    another name), so a file named .json is still read item by item."""
    lines = 0
    for _, _, error in _json_lines(path):
        if error is not None:
            return False
        lines += 1
    return lines > 1


def _iter_records(path: Path) -> Iterator[tuple[str, Any, str | None]]:
    """(source, record, error) for each record of a JSONL file or a JSON array file.

    What the file holds decides, not its name: a .jsonl holding one JSON array and a .json
    holding JSON lines are read as what they are. A JSONL line that does not parse yields an
    error instead of stopping the file; a JSON array file that does not parse is unusable as
    a whole (UsageError).
    """
    if path.suffix == ".jsonl":
        with path.open(encoding="utf-8-sig", errors="replace") as fh:
            head = fh.read(4096).lstrip()
        if not head.startswith("["):
            yield from _json_lines(path)
            return
        try:
            data = _read_json(path)
        except UsageError:  # a line that merely starts with "[": lines after all
            yield from _json_lines(path)
            return
    else:
        try:
            data = _read_json(path)
        except UsageError:
            if not _is_json_lines(path):
                raise
            yield from _json_lines(path)
            return
    if not isinstance(data, list):
        raise UsageError(f"{path}: expected a JSON array of items, got {type(data).__name__}")
    for index, record in enumerate(data):
        yield f"{path.name}[{index}]", record, None


def _find_file(root: Path, names: tuple[str, ...], what: str) -> Path:
    """`root` itself when it is a file, else the first of `names` under it."""
    if root.is_file():
        return root
    for name in names:
        if (root / name).is_file():
            return root / name
    raise UsageError(f"{root}: no {what} found (looked for {', '.join(names)})")


def _resolve_image(rel: Any, bases: tuple[Path, ...]) -> tuple[Path | None, str | None]:
    """The image file for a relative path tried under each base, or why there is none."""
    if not isinstance(rel, str) or not rel.strip():
        return None, "no image given"
    p = Path(rel.strip())
    candidates = [p] if p.is_absolute() else [base / p for base in bases]
    for c in candidates:
        if c.is_file():
            return c, None
    return None, f"image not found: {rel.strip()}"


def _label(value: Any) -> str | None:
    v = str(value).strip().lower() if isinstance(value, str) else None
    return v if v in ("safe", "unsafe") else None


def _category(value: Any, label: str) -> str:
    key = normalize_category(value)
    # An unsafe item without a category is still unsafe; "none" would read as "no hazard".
    return "unknown" if key == NO_CATEGORY and label == "unsafe" else key


def _position(source: str) -> int:
    """The 1-based line ("file.jsonl:7") or array position ("file.jsonl[6]") of a record."""
    name, _, line = source.rpartition(":")
    if name and line.isdigit():
        return int(line)
    return int(source.rsplit("[", 1)[-1].rstrip("]")) + 1


class _Ids:
    """Rejects duplicate ids: resumption and per_item.jsonl key on them."""

    def __init__(self) -> None:
        self.seen: set[str] = set()

    def take(self, item_id: str) -> bool:
        if item_id in self.seen:
            return False
        self.seen.add(item_id)
        return True


# -- OOD-MMSafe schema (and the synthetic world) --------------------------------------------


def _read_schema_file(
    path: Path, suite: str, data: SuiteData, ids: _Ids, *, require_image: bool = True
) -> None:
    """Read one file in the OOD-MMSafe item schema into `data`."""
    base = path.parent
    for source, rec, error in _iter_records(path):
        if error is not None:
            data.bad.append(BadItem(source, source, error))
            continue
        if not isinstance(rec, dict):
            data.bad.append(BadItem(source, source, f"not an object: {type(rec).__name__}"))
            continue
        raw_id = rec.get("id")
        item_id = str(raw_id) if isinstance(raw_id, (str, int)) and str(raw_id) else source
        problems = []
        if not isinstance(raw_id, (str, int)) or not str(raw_id):
            problems.append("no id")
        query = _text(rec.get("query"))
        if not query:
            problems.append("no query")
        label = _label(rec.get("label"))
        if label is None:
            problems.append(f"label must be 'safe' or 'unsafe', got {rec.get('label')!r}")
        image: Path | None = None
        if rec.get("image") is not None or require_image:
            image, why = _resolve_image(rec.get("image"), (base,))
            if why:
                problems.append(why)
        if problems:
            data.bad.append(BadItem(item_id, source, "; ".join(problems)))
            continue
        if not ids.take(item_id):
            data.bad.append(BadItem(item_id, source, "duplicate id"))
            continue
        assert label is not None
        ref = rec.get("reference_answer")
        data.items.append(BenchItem(
            id=item_id,
            suite=suite,
            query=query,
            label=label,  # type: ignore[arg-type]
            category=_category(rec.get("category"), label),
            image=image,
            hazard=_text(rec.get("hazard")),
            consequence=_text(rec.get("consequence")),
            reference_answer=ref if isinstance(ref, str) and ref.strip() else None,
            meta={k: v for k, v in rec.items() if k not in OOD_MMSAFE_FIELDS},
        ))


def load_ood_mmsafe(root: Path) -> SuiteData:
    """A local OOD-MMSafe copy (or anything in its item schema).

    `root` is a folder holding items.jsonl (or data.jsonl, items.json, data.json), or that file.
    Each item: `id`, `image` (relative to the file's folder), `query`, `category`, `hazard`,
    `consequence`, `label` ("safe" | "unsafe"), optional `reference_answer`; other fields are
    kept in `meta`.
    """
    data = SuiteData("ood-mmsafe")
    _read_schema_file(_find_file(root, ITEM_FILES, "item file"), "ood-mmsafe", data, _Ids())
    return data


def load_hazardworld(root: Path) -> SuiteData:
    """Items written by `guard world generate`: one folder, or a folder of split folders."""
    data = SuiteData("hazardworld", breakdowns=("target_rule", "ood", "split"))
    ids = _Ids()
    if root.is_file() or (root / "items.jsonl").is_file():
        files = [_find_file(root, ("items.jsonl",), "items.jsonl")]
    else:
        files = sorted(p for p in root.glob("*/items.jsonl") if p.is_file())
        if not files:
            raise UsageError(
                f"{root}: no items.jsonl here or in its subfolders "
                "(write one with `guard world generate --split S --n N --out DIR`)"
            )
    for f in files:
        _read_schema_file(f, "hazardworld", data, ids)
        if len(files) > 1:
            data.notes.append(f"read {f.parent.name}/items.jsonl")
    return data


# -- SIUO ------------------------------------------------------------------------------------


def load_siuo(root: Path) -> SuiteData:
    """SIUO (Safe Inputs but Unsafe Output): siuo_gen.json, a JSON array of
    `{question_id, image, question, category, safety_warning, reference_answer}`; every item is
    unsafe (the image and question together lead to harm). Images are looked up under
    images/, data/images/ and the folder itself."""
    path = _find_file(root, ("siuo_gen.json", "data/siuo_gen.json"), "siuo_gen.json")
    base = path.parent
    bases = (base / "images", base, base.parent / "images", base.parent)
    data = SuiteData("siuo")
    ids = _Ids()
    for source, rec, _ in _iter_records(path):
        if not isinstance(rec, dict):
            data.bad.append(BadItem(source, source, f"not an object: {type(rec).__name__}"))
            continue
        item_id = str(rec.get("question_id", source))
        query = _text(rec.get("question"))
        image, why = _resolve_image(rec.get("image"), bases)
        problems = [p for p in (None if query else "no question", why) if p]
        if problems or not ids.take(item_id):
            data.bad.append(BadItem(item_id, source, "; ".join(problems) or "duplicate id"))
            continue
        ref = rec.get("reference_answer")
        data.items.append(BenchItem(
            id=item_id, suite="siuo", query=query, label="unsafe",
            category=_category(rec.get("category"), "unsafe"), image=image,
            hazard=_text(rec.get("safety_warning")),
            reference_answer=ref if isinstance(ref, str) and ref.strip() else None,
        ))
    return data


# -- MSSBench --------------------------------------------------------------------------------


def _instruction_pairs(entry: dict[str, Any]) -> list[tuple[str, str]]:
    safe, unsafe = entry.get("safe_instructions"), entry.get("unsafe_instructions")
    if isinstance(safe, list) and isinstance(unsafe, list):
        # paired up to the shorter list, as MSSBench's own inference does
        return [(_text(s), _text(u)) for s, u in zip(safe, unsafe, strict=False)]
    return [(_text(entry.get("safe_instruction")), _text(entry.get("unsafe_instruction")))]


def load_mssbench(root: Path) -> SuiteData:
    """MSSBench (Multimodal Situational Safety): combined.json with "chat" and "embodied" lists.

    Chat entries `{safe_image_path, unsafe_image_path, intent, unsafe_image, Type, queries}`:
    each query is asked once with the safe image (label safe) and once with the unsafe image
    (label unsafe; `unsafe_image` describes what makes it so). Embodied entries `{task, category,
    safe_instruction(s), unsafe_instruction(s), safe, unsafe}`: each safe instruction goes with
    the safe image, each unsafe one with the unsafe image, as MSSBench's own inference pairs them.
    Images live under chat/ and embodied/.
    """
    path = _find_file(root, ("combined.json", "combine.json"), "combined.json")
    base = path.parent
    raw = _read_json(path)
    if not isinstance(raw, dict):
        raise UsageError(f"{path}: expected an object with 'chat' and 'embodied' lists")
    data = SuiteData("mssbench", breakdowns=("task_type",))
    ids = _Ids()

    def add(item_id: str, source: str, query: str, label: str, image_rel: Any, sub: str,
            category: Any, hazard: str, meta: dict[str, Any]) -> None:
        image, why = _resolve_image(image_rel, (base / sub, base))
        problems = [p for p in (None if query else "no query", why) if p]
        if problems or not ids.take(item_id):
            data.bad.append(BadItem(item_id, source, "; ".join(problems) or "duplicate id"))
            return
        data.items.append(BenchItem(
            id=item_id, suite="mssbench", query=query, label=label,  # type: ignore[arg-type]
            category=_category(category, label), image=image,
            hazard=hazard if label == "unsafe" else "", meta=meta,
        ))

    for i, entry in enumerate(raw.get("chat") or []):
        source = f"{path.name}:chat[{i}]"
        if not isinstance(entry, dict):
            data.bad.append(BadItem(f"chat-{i:04d}", source, "not an object"))
            continue
        queries = entry.get("queries")
        if not isinstance(queries, list) or not queries:
            queries = [entry.get("intent")]
        meta = {"task_type": "chat", "intent": _text(entry.get("intent"))}
        for j, q in enumerate(queries):
            for label, key in (("safe", "safe_image_path"), ("unsafe", "unsafe_image_path")):
                add(f"chat-{i:04d}-q{j}-{label}", source, _text(q), label, entry.get(key),
                    "chat", entry.get("Type"), _text(entry.get("unsafe_image")), meta)
    for i, entry in enumerate(raw.get("embodied") or []):
        source = f"{path.name}:embodied[{i}]"
        if not isinstance(entry, dict):
            data.bad.append(BadItem(f"embodied-{i:04d}", source, "not an object"))
            continue
        meta = {"task_type": "embodied", "task": _text(entry.get("task"))}
        for k, (safe_q, unsafe_q) in enumerate(_instruction_pairs(entry)):
            add(f"embodied-{i:04d}-{k}-safe", source, safe_q, "safe", entry.get("safe"),
                "embodied", entry.get("category"), "", meta)
            add(f"embodied-{i:04d}-{k}-unsafe", source, unsafe_q, "unsafe", entry.get("unsafe"),
                "embodied", entry.get("category"), _text(entry.get("observation_unsafe")), meta)
    return data


# -- VLSBench --------------------------------------------------------------------------------


def load_vlsbench(root: Path) -> SuiteData:
    """VLSBench: data.json, a JSON array of `{instruction_id, instruction, image_path, category,
    sub_category, source}`; every item is unsafe (the harm is in the image, not the text).
    `image_path` ("imgs/0.png") is relative to the folder holding data.json."""
    path = _find_file(root, ("data.json", "data/data.json"), "data.json")
    bases = (path.parent, path.parent.parent)
    data = SuiteData("vlsbench", breakdowns=("sub_category",))
    ids = _Ids()
    for source, rec, _ in _iter_records(path):
        if not isinstance(rec, dict):
            data.bad.append(BadItem(source, source, f"not an object: {type(rec).__name__}"))
            continue
        item_id = str(rec.get("instruction_id", source))
        query = _text(rec.get("instruction"))
        image_rel = rec.get("image_path", rec.get("image"))
        image, why = _resolve_image(image_rel, bases)
        problems = [p for p in (None if query else "no instruction", why) if p]
        if problems or not ids.take(item_id):
            data.bad.append(BadItem(item_id, source, "; ".join(problems) or "duplicate id"))
            continue
        data.items.append(BenchItem(
            id=item_id, suite="vlsbench", query=query, label="unsafe",
            category=_category(rec.get("category"), "unsafe"), image=image,
            hazard=_text(rec.get("safety_reason")),
            meta={"sub_category": _text(rec.get("sub_category")),
                  "source": _text(rec.get("source"))},
        ))
    return data


# -- SafeAgentBench --------------------------------------------------------------------------

# The paper's ten hazards (Yin et al. 2024, arXiv:2412.13178), five that harm people and five
# that damage property, as normalised keys.
SAFEAGENTBENCH_HARM_TO_HUMANS = (
    "fire_hazard", "electrical_shock_hazard", "explosion_hazard",
    "poisoning_ingestion_hazard", "slip_hazard",
)
SAFEAGENTBENCH_PROPERTY_DAMAGE = (
    "liquid_and_spill_damage", "breakage_and_dropping", "misuse_of_electrical_appliances",
    "furniture_and_decor_damage", "damage_to_small_items",
)
SAFEAGENTBENCH_CATEGORIES = SAFEAGENTBENCH_HARM_TO_HUMANS + SAFEAGENTBENCH_PROPERTY_DAMAGE
# Spellings in the published files that name one of the ten in other words. Labels that name
# none of them ("Causing Harm to Humans", "Impact Hazard", "Property Damage", ...) are
# "other", with the file's own text kept in meta.risk_category.
SAFEAGENTBENCH_ALIASES = {
    "fire_risk": "fire_hazard",
    "electrical_appliance_misuse": "misuse_of_electrical_appliances",
    "breakage": "breakage_and_dropping",
    "breakage_hazard": "breakage_and_dropping",
    "break_hazard": "breakage_and_dropping",
    "water_damage_hazard": "liquid_and_spill_damage",
    "staining_hazard": "liquid_and_spill_damage",
}
SAFEAGENTBENCH_OTHER = "other"
# "Risk Category: X", "Risk: X", "Causing harm to humans: X": the label is after the colon.
_RISK_PREFIX = re.compile(r"^[^:]*:\s*")
_RISK_SEPARATOR = re.compile(r"[,;]")


def safeagentbench_categories(raw: str) -> list[str]:
    """The paper's hazard categories a `risk_category` string names, in the file's order.

    The published files write one category ("Fire Hazard"), several ("Electrical Shock Hazard,
    Fire Hazard", "Liquid and Spill Damage; Damage to Small Items"), a prefix ("Risk Category:
    Fire Hazard") or a synonym ("Fire Risk"): 50 distinct strings for the ten hazards.
    Returns ["other"] when none of the ten is named.
    """
    found: list[str] = []
    text = _RISK_PREFIX.sub("", raw.strip())
    for part in _RISK_SEPARATOR.split(text):
        key = normalize_category(part)
        key = SAFEAGENTBENCH_ALIASES.get(key, key)
        if key in SAFEAGENTBENCH_CATEGORIES and key not in found:
            found.append(key)
    return found or [SAFEAGENTBENCH_OTHER]


def load_safeagentbench(root: Path) -> SuiteData:
    """SafeAgentBench task files, judged text-only (no image): the instruction is the proposal's
    description and the reference step plan (`step`) its `steps` argument.

    - safe_detailed_*.jsonl: `{instruction, step, final_state, scene_name}`, label safe;
    - unsafe_detailed_*.jsonl: the same plus `risk_category`, label unsafe;
    - abstract_*.jsonl: `instruction` is four phrasings from concrete to abstract, one item each
      (`meta.abstraction_level` 0-3), label unsafe;
    - long_horizon_*.jsonl is skipped: its hazard is an ordering requirement on a plan the file
      does not contain, so there is no proposal to judge.
    """
    folder = root / "dataset" if (root / "dataset").is_dir() else root
    if not folder.is_dir():
        raise UsageError(f"{root}: not a folder of SafeAgentBench .jsonl files")
    kinds = (("safe_detailed", "safe"), ("unsafe_detailed", "unsafe"), ("abstract", "unsafe"))
    data = SuiteData("safeagentbench", text_only=True, breakdowns=("source", "harm_to"))
    ids = _Ids()
    found = False
    for kind, label in kinds:
        for path in sorted(folder.glob(f"{kind}*.jsonl")):
            found = True
            for source, rec, error in _iter_records(path):
                base_id = f"{kind}-{_position(source):04d}"
                if error is not None or not isinstance(rec, dict):
                    data.bad.append(BadItem(base_id, source, error or "not an object"))
                    continue
                steps = rec.get("step")
                arguments = (
                    {"steps": [str(s) for s in steps]}
                    if isinstance(steps, list) and steps else {}
                )
                instr = rec.get("instruction")
                phrasings = instr if isinstance(instr, list) else [instr]
                risk = _text(rec.get("risk_category"))
                categories = safeagentbench_categories(risk) if label == "unsafe" else []
                for level, text in enumerate(phrasings):
                    item_id = f"{base_id}-L{level}" if isinstance(instr, list) else base_id
                    query = _text(text)
                    if not query or not ids.take(item_id):
                        reason = "no instruction" if not query else "duplicate id"
                        data.bad.append(BadItem(item_id, source, reason))
                        continue
                    meta: dict[str, Any] = {"source": kind,
                                            "scene_name": _text(rec.get("scene_name"))}
                    if isinstance(instr, list):
                        meta["abstraction_level"] = level
                    if categories:
                        # the first category named is the item's; all of them, the paper's
                        # grouping and the file's own words stay with it
                        meta["risk_category"] = risk
                        meta["risk_categories"] = categories
                        meta["harm_to"] = (
                            "humans" if categories[0] in SAFEAGENTBENCH_HARM_TO_HUMANS
                            else "property" if categories[0] in SAFEAGENTBENCH_PROPERTY_DAMAGE
                            else SAFEAGENTBENCH_OTHER
                        )
                    data.items.append(BenchItem(
                        id=item_id, suite="safeagentbench", query=query,
                        label=label,  # type: ignore[arg-type]
                        category=categories[0] if categories else NO_CATEGORY,
                        arguments=arguments, meta=meta,
                    ))
    skipped = sorted(p.name for p in folder.glob("long_horizon*.jsonl"))
    if skipped:
        data.notes.append(
            f"skipped {', '.join(skipped)}: long-horizon tasks state an ordering requirement, "
            "not a plan to judge"
        )
    if not found:
        raise UsageError(
            f"{folder}: no safe_detailed*/unsafe_detailed*/abstract*.jsonl files found"
        )
    return data


# -- registry --------------------------------------------------------------------------------

Loader = Callable[[Path], SuiteData]

SUITES: dict[str, tuple[Loader, str]] = {
    "hazardworld": (load_hazardworld, "synthetic consequence world (guard world generate)"),
    "ood-mmsafe": (load_ood_mmsafe, "OOD-MMSafe from a local folder (items.jsonl + images)"),
    "siuo": (load_siuo, "SIUO siuo_gen.json + images/"),
    "mssbench": (load_mssbench, "MSSBench combined.json + chat/ + embodied/"),
    "vlsbench": (load_vlsbench, "VLSBench data.json + imgs/"),
    "safeagentbench": (load_safeagentbench, "SafeAgentBench dataset/*.jsonl (text only)"),
}
SUITE_NAMES: tuple[str, ...] = tuple(SUITES)


def load_suite(name: str, data: str | Path) -> SuiteData:
    """Load suite `name` from `data` (a folder, or for single-file suites the file itself).

    Raises:
        UsageError: unknown suite, missing folder, or no readable data file in it.
    """
    try:
        loader = SUITES[name][0]
    except KeyError:
        raise UsageError(
            f"unknown suite {name!r} (known: {', '.join(SUITE_NAMES)})"
        ) from None
    root = Path(data)
    if not root.exists():
        raise UsageError(f"--data {data}: no such file or folder")
    loaded = loader(root)
    if loaded.bad and not loaded.items:
        # Nothing to judge (the images were never downloaded, most often): a run would score
        # nothing and exit 0. Say why, with the commonest reasons and an example of each.
        kinds: dict[str, list[str]] = {}
        for bad in loaded.bad:
            kind, _, detail = bad.reason.partition(": ")
            kinds.setdefault(kind, []).append(detail or bad.id)
        why = "; ".join(
            f"{len(v)} {k} (e.g. {v[0]})"
            for k, v in sorted(kinds.items(), key=lambda kv: -len(kv[1]))[:3])
        raise UsageError(
            f"--data {data}: none of the {len(loaded.bad)} {name} items can be judged: {why}")
    return loaded
