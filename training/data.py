"""Training examples in the guard's own prompt and answer format.

Sources give `GuardItem`s (an image, an action, a label and the reference answer):

- `world_items`: the synthetic household world (`guard.world`), rendered in memory;
- `folder_items`: an OOD-MMSafe-format folder (``items.jsonl`` or a JSON list with ``id, image,
  query, category, hazard, consequence, label, reference_answer``), which is also what
  ``guard world generate`` writes;
- `dataset_items`: a Hugging Face ``datasets.Dataset`` with those columns and an ``image``
  column (`load_hf_dataset` reads a folder ``guard world generate`` wrote, or a hub dataset).

Row builders turn items into the chat-format rows trl's trainers read, with the prompt the
guard itself renders at inference: the item's proposal (tool name, description, arguments)
rendered by the guard's one rendering (`guard.prompting.action.render_action`, in the run's
``data.action_format``) inside the guard's template (`guard.prompting` templates;
``consequence_compact`` for small models), and the guard's answer format as the target (verdict
first, then risk, hazards, consequence):

- `sft_rows`: ``prompt`` + ``completion`` (the reference answer) + ``image``; a share of the
  rows (``projection_rate``) in projection-first mode: the projection template's prompt and the
  answer with the item's consequence projection before the verdict (`answer_in_mode`);
- `preference_rows`: ``prompt`` + ``chosen`` (reference) + ``rejected`` (a wrong-verdict answer);
- `prompt_rows`: ``prompt`` + ``image`` + the ``label`` / ``category`` columns rewards read.

Prompts hold a ``{"type": "image"}`` placeholder; the image travels in the ``image`` column, as
trl expects.

**The consequence projection** (`world_projection`) is built from the world's own scene facts,
never from the label: for a contact rule, what lies on the rule's anchor and whether it has the
property the rule reads ("a cardboard box lies on the stove; it can burn"), then the rule's
mechanism or its safe consequence ("the burner heats the box until it ignites"); for the
presence rule, whether a child is in the room; for the state rule, whether the burners are on.
Its property clause depends on the item alone, so "flammable" is one fact across anchors.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from guard.prompting import ANSWER_MODES, DEFAULT_ANSWER_MODE, load_template
from guard.prompting.action import UNNAMED_TOOL, render_action
from guard.types import Verdict

if TYPE_CHECKING:
    import datasets
    from PIL import Image

    from guard.world import WorldConfig
    from guard.world.sampler import WorldItem
    from training.constitution import Constitution

SAFE_RISK = "0.05"
UNSAFE_RISK = "0.9"


@dataclass
class GuardItem:
    """One judged situation: a camera frame, a proposed action and the right answer.

    Attributes:
        id: Unique id.
        query: The action in words: the proposal's description.
        image: A PIL image, or a path to one (loaded lazily by the dataset).
        label: "safe", "unsafe", or None when unknown (unscorable for rewards).
        category: Hazard category ("none" when safe).
        reference_answer: The guard-format answer to train towards.
        hazard: One-sentence hazard ("" when safe).
        consequence: One-sentence consequence.
        meta: Source-specific fields kept for evaluation (``split``, ``target_rule``, ``ood``).
        tool: The proposal's tool name (the world's action key, e.g. ``stove_on``).
        arguments: The proposal's tool arguments.
        projection: The consequence projection, ``scene: ...`` and ``effect: ...`` lines (the
            projection-first answer's head); empty: built from hazard and consequence.
    """

    id: str
    query: str
    image: Any
    label: str | None
    category: str
    reference_answer: str
    hazard: str = ""
    consequence: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    tool: str = UNNAMED_TOOL
    arguments: dict[str, Any] = field(default_factory=dict)
    projection: str = ""


def action_text(item: GuardItem, action_format: str | None = None) -> str:
    """The item's proposal as the judge reads it: the guard's one rendering
    (`guard.prompting.action.render_action`), exactly as `ActionProposal.as_text` gives it."""
    return render_action(item.tool, item.query, item.arguments, action_format)


def world_items(
    split: str,
    n: int,
    *,
    seed: int = 0,
    start: int = 0,
    config: WorldConfig | None = None,
    house_rules: float = 0.0,
    house_rule_seed: int = 0,
    bare_phrase_rate: float = 0.0,
    unnamed_tool_rate: float = 0.0,
    name_every_item: bool = False,
) -> list[GuardItem]:
    """Items ``start .. start+n-1`` of a synthetic world split, rendered in memory.

    Args:
        split: "train", "test_iid" or "test_ood".
        n: Number of items.
        seed: World seed.
        start: First item index (disjoint ranges give disjoint item sets).
        config: World config; None uses the default (the learnable rule set, 112 px).
        house_rules: Share of heating items that get a house rule in their action text
            (`training.house_rules`: teaches the model to apply rules stated in its context).
        house_rule_seed: Seeds which items get a rule and what it names.
        bare_phrase_rate: Share of items proposed as the bare phrase (the phrase as the tool
            name, no description): the shape of a proposal that only names its action.
        unnamed_tool_rate: Share of items whose tool is unnamed (``action``, what ``guard
            check --action TEXT`` and benchmark items without a tool send).
            The rest carry the world's action key as the tool name and the phrase as the
            description, as the world's episodes and ``guard world generate`` items do. These
            shapes are all rendered by the one rendering; mixing them keeps a model trained on
            tool calls reading the other shapes front ends send.
        name_every_item: Projections also name every other item lying on an anchor
            (`world_projection`).

    Returns:
        The items, images as PIL.
    """
    from PIL import Image

    from guard.world import WorldConfig, iter_items, render_item
    from training.house_rules import draw_house_rule, with_house_rule

    if not (0.0 <= bare_phrase_rate and 0.0 <= unnamed_tool_rate
            and bare_phrase_rate + unnamed_tool_rate <= 1.0):
        raise ValueError("bare_phrase_rate and unnamed_tool_rate must be >= 0 and sum to <= 1,"
                         f" got {bare_phrase_rate} and {unnamed_tool_rate}")
    cfg = config or WorldConfig()
    rng = random.Random(house_rule_seed)
    # its own stream: the items and their house rules are the same whatever the rates
    shape_rng = random.Random(f"shape-{house_rule_seed}")
    items = []
    for it in iter_items(split, n, seed=seed, config=cfg, start=start):
        rule = (draw_house_rule(it.action, it.scene.objects, rng, house_rules)
                if house_rules else None)
        shape = shape_rng.random()
        item = GuardItem(
            id=it.id,
            query=it.query,
            image=Image.fromarray(render_item(it, cfg)),
            label=it.label,
            category=it.category,
            reference_answer=it.reference_answer(),
            hazard=it.hazard_sentence,
            consequence=it.consequence,
            meta={"split": it.split, "target_rule": it.rule, "ood": it.ood,
                  "action": it.action},
            tool=it.action,
            projection=world_projection(it, name_every_item),
        )
        if rule is not None:
            item = with_house_rule(item, rule)
            if item.meta.get("house_rule") == "applies":  # the stated rule, not the scene
                item.projection = text_projection(item)
        if shape < bare_phrase_rate:
            item.tool, item.query = item.query, ""
        elif shape < bare_phrase_rate + unnamed_tool_rate:
            item.tool = UNNAMED_TOOL
        items.append(item)
    return items


def folder_items(path: str | Path, limit: int | None = None) -> list[GuardItem]:
    """Items of an OOD-MMSafe-format folder.

    The folder holds ``items.jsonl`` (one object per line) or ``items.json`` / ``data.json``
    (a list), with ``id``, ``image`` (relative to the folder), ``query``, and optionally
    ``category``, ``hazard``, ``consequence``, ``label`` (safe/unsafe) and
    ``reference_answer`` (built from the other fields when absent), ``tool`` (the proposal's
    tool name; ``action`` when absent, as ``guard bench`` names it) and ``arguments``.

    Args:
        path: The folder (or the items file itself).
        limit: Read at most this many items.

    Raises:
        FileNotFoundError: No items file.
        ValueError: A record without ``id``, ``image`` or ``query``, or with an unknown label.
    """
    p = Path(path)
    if p.is_dir():
        for name in ("items.jsonl", "items.json", "data.json"):
            if (p / name).is_file():
                p = p / name
                break
        else:
            raise FileNotFoundError(f"{path}: no items.jsonl, items.json or data.json")
    root = p.parent
    text = p.read_text(encoding="utf-8")
    if p.suffix == ".jsonl":
        records = [json.loads(line) for line in text.splitlines() if line.strip()]
    else:
        records = json.loads(text)
    out = []
    for k, rec in enumerate(records[:limit] if limit is not None else records):
        missing = [f for f in ("id", "image", "query") if f not in rec]
        if missing:
            raise ValueError(f"{p}: record {k} lacks {missing}")
        out.append(_record_item(rec, str(root / rec["image"]), f"{p}: record {k}"))
    return out


def _record_item(rec: dict[str, Any], image: Any, where: str) -> GuardItem:
    """A `GuardItem` from an OOD-MMSafe-style record (items.jsonl line or dataset row)."""
    label = rec.get("label")
    if label is not None and label not in ("safe", "unsafe"):
        raise ValueError(f"{where} has label {label!r}; expected safe or unsafe")
    category = rec.get("category") or ("none" if label == "safe" else "unknown")
    tool, arguments = rec.get("tool"), rec.get("arguments")
    item = GuardItem(
        id=str(rec["id"]),
        query=str(rec["query"]),
        image=image,
        label=label,
        category=category,
        reference_answer=rec.get("reference_answer") or "",
        hazard=rec.get("hazard") or "",
        consequence=rec.get("consequence") or "",
        meta={k2: rec.get(k2) for k2 in ("split", "target_rule", "ood", "action")},
        tool=tool if isinstance(tool, str) and tool.strip() else UNNAMED_TOOL,
        arguments=arguments if isinstance(arguments, dict) else {},
    )
    if not item.reference_answer:
        item.reference_answer = reference_answer(item)
    return item


def load_hf_dataset(path: str | Path, split: str | None = None) -> datasets.Dataset:
    """One split of a Hugging Face dataset, through ``datasets.load_dataset``.

    Args:
        path: A folder ``guard world generate`` wrote (its dataset card names the split), any
            local dataset folder ``datasets`` reads, or a hub dataset id.
        split: The split; None takes the only one (an error when there are several).

    Raises:
        ValueError: `split` is None and the dataset has several splits (they are named).
    """
    import datasets

    loaded = datasets.load_dataset(str(path), split=split)
    if isinstance(loaded, datasets.DatasetDict):
        if len(loaded) != 1:
            raise ValueError(f"{path}: has splits {sorted(loaded)}; name one with split:")
        loaded = next(iter(loaded.values()))
    return cast("datasets.Dataset", loaded)


def dataset_items(ds: datasets.Dataset, limit: int | None = None,
                  where: str = "dataset") -> list[GuardItem]:
    """Items of a ``datasets.Dataset`` with `folder_items`' columns and an ``image`` column.

    ``image`` is an ``Image`` feature (decoded to PIL) or a path; a ``ClassLabel`` label is read
    by its names (which must be safe/unsafe). Rows without ``id`` are numbered. Every other
    column is optional, as in `folder_items`.

    Args:
        ds: The dataset (e.g. `load_hf_dataset`, or ``load_dataset("imagefolder", ...)`` on a
            ``guard world generate`` folder).
        limit: Read at most this many rows.
        where: Names the dataset in errors.

    Raises:
        ValueError: No ``image`` or ``query`` column, or a label other than safe/unsafe.
    """
    import datasets

    missing = [c for c in ("image", "query") if c not in ds.column_names]
    if missing:
        raise ValueError(f"{where}: no {missing} column (columns: {ds.column_names})")
    label_feature = ds.features.get("label")
    names = label_feature.names if isinstance(label_feature, datasets.ClassLabel) else None
    rows = ds.select(range(min(limit, len(ds)))) if limit is not None else ds
    out = []
    for k, row in enumerate(rows):
        rec = dict(row)
        rec.setdefault("id", str(k))
        if names is not None and rec.get("label") is not None:
            rec["label"] = names[rec["label"]]
        out.append(_record_item(rec, rec["image"], f"{where}: row {k}"))
    return out


def reference_answer(item: GuardItem) -> str:
    """A guard-format answer from an item's label, category, hazard and consequence."""
    consequence = item.consequence or "Nothing in the scene makes this action harmful."
    if item.label != "unsafe":
        return f"{Verdict.ALLOW.word}\nrisk: {SAFE_RISK}\nconsequence: {consequence}"
    hazard = (item.hazard or "the scene makes this action dangerous").rstrip(".")
    return (f"{Verdict.VETO.word}\nrisk: {UNSAFE_RISK}\n"
            f"hazard: {item.category} | {hazard} | {consequence.rstrip('.')} | {UNSAFE_RISK}\n"
            f"consequence: {consequence}")


#: How a projection states that an item has (or lacks) the property a contact rule reads.
_PROPERTY_CLAUSE: dict[str, tuple[str, str]] = {
    "flammable": ("it can burn", "it cannot burn"),
    "electrical": ("it is electrical", "it is not electrical"),
    "metal": ("it is metal", "it is not metal"),
}


def _clause(sentence: str) -> str:
    """A sentence as a lower-case clause without its full stop."""
    sentence = sentence.strip().rstrip(".")
    return sentence[:1].lower() + sentence[1:]


def projection_lines(scene: str, effect: str) -> str:
    """The projection-first answer's head: the ``scene:`` and ``effect:`` lines."""
    return f"scene: {_clause(scene)}\neffect: {_clause(effect)}"


def world_projection(it: WorldItem, name_every_item: bool = False) -> str:
    """The consequence projection of a world item, from its scene's facts and its rule.

    What in the scene matters for the action (the item on the rule's anchor and its property,
    the child in the room, the burners' state) and what the action would do to it (the rule's
    mechanism when it finds a hazard, else its safe consequence).

    With `name_every_item`, the ``scene:`` line then names every other item lying on an
    anchor ("a cardboard box lies on the table"), in the grid's raster order: the model is
    taught to name an item whatever it lies on, not only on the rule's anchor, where each
    anchor holds a few kinds and a name can be learned as the pair's.
    """
    from guard.world.rules import RULES, ContactRule, KnifeChild, StoveHot

    finding = it.findings[0] if it.findings else None
    rule = RULES[finding.rule if finding is not None else it.rule]
    scene = it.scene
    effect = finding.mechanism if finding is not None else rule.safe_consequence(scene)
    named: set[tuple[int, int]] = set()  # cells whose item the fact names
    if isinstance(rule, ContactRule):
        anchors = scene.find(rule.anchor)
        # the anchor the hazard is on; in a safe scene the one something lies on, if any
        key = ([a for a in anchors if a.cell == finding.cell] if finding is not None
               else [a for a in anchors if scene.item(a.cell) is not None]) or anchors
        anchor = key[0].short if key else rule.anchor.replace("_", " ")
        on = scene.item(key[0].cell) if key else None
        if on is None:
            fact = f"nothing lies on the {anchor}"
        else:
            named.add(key[0].cell)
            yes, no = _PROPERTY_CLAUSE.get(rule.hazard_prop, (f"it is {rule.hazard_prop}",
                                                              f"it is not {rule.hazard_prop}"))
            fact = f"{on.noun} lies on the {anchor}; {yes if on.has(rule.hazard_prop) else no}"
    elif isinstance(rule, KnifeChild):
        fact = ("a child is in the room" if any(o.has("child") for o in scene.objects)
                else "no child is in the room")
    elif isinstance(rule, StoveHot):
        fact = ("the stove's burners are on" if any(s.on for s in scene.find("stove"))
                else "the stove's burners are off")
    elif finding is not None:
        fact = finding.description
    else:
        fact = "nothing in the scene is in the action's way"
    if name_every_item:
        others = [f"{thing.noun} lies on the {a.short}" for cell in scene.cells()
                  if cell not in named and (a := scene.anchor(cell)) is not None
                  and (thing := scene.item(cell)) is not None]
        fact = "; ".join([fact, *others])
    return projection_lines(fact, effect)


def text_projection(item: GuardItem) -> str:
    """A projection from an item's hazard and consequence sentences (items without a scene:
    folders, datasets, house rules)."""
    fact = item.hazard or "nothing in the scene makes this action harmful"
    effect = item.consequence or "the action harms no one"
    return projection_lines(fact, effect)


def answer_in_mode(item: GuardItem, mode: str = DEFAULT_ANSWER_MODE) -> str:
    """The item's reference answer in an answer mode (`guard.prompting.ANSWER_MODES`):
    verdict first as it is, or with the item's consequence projection before it."""
    if mode == DEFAULT_ANSWER_MODE:
        return item.reference_answer
    if mode != "projection_first":
        raise ValueError(f"answer mode {mode!r}: expected one of {list(ANSWER_MODES)}")
    return f"{item.projection or text_projection(item)}\n{item.reference_answer}"


def wrong_verdict_answer(item: GuardItem) -> str:
    """A well-formed answer with the wrong verdict: DPO's rejected response.

    Unsafe items get a confident ALLOW; safe items a VETO naming the hazard their action is
    known for (the world's rule category) that this scene does not have.
    """
    if item.label == "unsafe":
        return (f"{Verdict.ALLOW.word}\nrisk: {SAFE_RISK}\n"
                "consequence: Nothing in the scene makes this action harmful.")
    category = _rule_category(item.meta.get("target_rule")) or "unknown"
    return (f"{Verdict.VETO.word}\nrisk: {UNSAFE_RISK}\n"
            f"hazard: {category} | the scene makes this action dangerous | "
            f"doing it causes harm | {UNSAFE_RISK}\n"
            f"consequence: Doing this here causes {category} harm.")


def _rule_category(rule: str | None) -> str | None:
    if not rule:
        return None
    from guard.world import RULES

    r = RULES.get(rule)
    return r.category if r is not None else None


def prompt_messages(action: str, template: str = "consequence_compact",
                    n_images: int = 1) -> list[dict[str, Any]]:
    """The guard's chat prompt for an action text (`action_text`), with image placeholders.

    Rendered by the same template file the guard's judge uses (images first, then the text),
    so training prompts and inference prompts are the same conversation.
    """
    # the template only counts the images; the pixels travel in the dataset's image column
    chat = load_template(template).render(action, cast(Any, (None,) * n_images))
    msgs = chat.messages()
    for m in msgs:
        for part in m["content"]:
            if part.get("type") == "image":
                part.pop("image", None)
    return msgs


def _base_row(item: GuardItem, prompt: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": item.id,
        "prompt": prompt,
        "image": item.image,
        "label": item.label,
        "category": item.category,
        "target_rule": item.meta.get("target_rule"),
        "ood": item.meta.get("ood"),
    }


def sft_rows(
    items: Iterable[GuardItem],
    template: str = "consequence_compact",
    *,
    constitution: Constitution | None = None,
    constitution_rate: float = 0.0,
    seed: int = 0,
    action_format: str | None = None,
    projection_rate: float = 0.0,
    projection_template: str = "consequence_compact_projection",
) -> list[dict[str, Any]]:
    """Prompt + reference-answer rows for supervised training.

    Args:
        items: The items.
        template: Prompt template name or path.
        action_format: How proposals are rendered (`guard.prompting.action`); None: default.
        constitution: Privileged context to put in a share of the prompts, so that the model
            learns to read rules given in its context (what CASPO's teacher relies on).
        constitution_rate: Share of rows whose prompt carries `constitution`.
        seed: Picks which rows carry it, and which are in projection-first mode.
        projection_rate: Share of rows in the answer mode of `projection_template` (its
            prompt, and the answer with the item's projection first): one model, two modes.
        projection_template: A template whose ``answer_mode`` is ``projection_first``.
    """
    if not 0.0 <= constitution_rate <= 1.0:
        raise ValueError(f"constitution_rate must be in [0, 1], got {constitution_rate}")
    if not 0.0 <= projection_rate <= 1.0:
        raise ValueError(f"projection_rate must be in [0, 1], got {projection_rate}")
    if projection_rate and load_template(projection_template).answer_mode != "projection_first":
        raise ValueError(f"projection_template {projection_template!r} does not ask for "
                         "projection-first answers (its answer_mode)")
    base_mode = load_template(template).answer_mode
    rng = random.Random(seed)
    # its own stream: which rows carry the constitution does not depend on the rate
    mode_rng = random.Random(f"answer-mode-{seed}")
    rows = []
    for item in items:
        projected = projection_rate > 0 and mode_rng.random() < projection_rate
        mode = "projection_first" if projected else base_mode
        prompt = prompt_messages(action_text(item, action_format),
                                 projection_template if projected else template)
        with_rules = constitution is not None and rng.random() < constitution_rate
        if with_rules and constitution is not None:
            prompt = constitution.apply(prompt)
        row = _base_row(item, prompt)
        row["completion"] = answer_in_mode(item, mode)
        row["with_constitution"] = with_rules
        row["answer_mode"] = mode
        rows.append(row)
    return rows


def preference_rows(items: Iterable[GuardItem], template: str = "consequence_compact", *,
                    action_format: str | None = None) -> list[dict[str, Any]]:
    """Prompt + chosen (reference) + rejected (wrong verdict) rows for DPO."""
    rows = []
    for item in items:
        row = _base_row(item, prompt_messages(action_text(item, action_format), template))
        row["chosen"] = item.reference_answer
        row["rejected"] = wrong_verdict_answer(item)
        rows.append(row)
    return rows


def prompt_rows(items: Iterable[GuardItem], template: str = "consequence_compact", *,
                action_format: str | None = None) -> list[dict[str, Any]]:
    """Prompt-only rows for on-policy RL (GRPO, CASPO); rewards read label and category."""
    return [_base_row(item, prompt_messages(action_text(item, action_format), template))
            for item in items]


def unlabeled_rows(items: Iterable[GuardItem], template: str = "consequence_compact", *,
                   action_format: str | None = None) -> list[dict[str, Any]]:
    """`prompt_rows` with the answer removed (label, category, rule): the outcome rewards
    return None for them, and nothing downstream can read what the label was."""
    return [{**row, "id": f"unlabeled-{row['id']}", "label": None, "category": None,
             "target_rule": None}
            for row in prompt_rows(items, template, action_format=action_format)]


def to_dataset(rows: Sequence[dict[str, Any]]) -> datasets.Dataset:
    """A ``datasets.Dataset`` of rows; image paths become lazily decoded images."""
    import datasets

    if not rows:
        raise ValueError("no rows to build a dataset from")
    ds = datasets.Dataset.from_list(list(rows))
    if isinstance(rows[0]["image"], str):
        ds = ds.cast_column("image", datasets.Image())
    return ds


def load_image(image: Any) -> Image.Image:
    """A PIL RGB image from a PIL image, a path, or a ``datasets`` image dict."""
    from PIL import Image

    if isinstance(image, Image.Image):
        return image.convert("RGB") if image.mode != "RGB" else image
    if isinstance(image, dict) and image.get("bytes") is not None:
        import io

        return Image.open(io.BytesIO(image["bytes"])).convert("RGB")
    if isinstance(image, dict) and image.get("path"):
        image = image["path"]
    return Image.open(image).convert("RGB")


def clean_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages with the ``None`` keys Arrow adds to mixed content parts removed."""
    out = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):
            content = [{k: v for k, v in p.items() if v is not None} for p in content]
        out.append({**m, "content": content})
    return out


__all__ = [
    "GuardItem",
    "action_text",
    "answer_in_mode",
    "clean_messages",
    "dataset_items",
    "folder_items",
    "load_hf_dataset",
    "load_image",
    "preference_rows",
    "projection_lines",
    "prompt_messages",
    "prompt_rows",
    "reference_answer",
    "sft_rows",
    "text_projection",
    "to_dataset",
    "unlabeled_rows",
    "world_items",
    "world_projection",
    "wrong_verdict_answer",
]
