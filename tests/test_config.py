from pathlib import Path

import pytest
from pydantic import BaseModel

from guard.config import GuardConfig, load_config
from guard.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_default_yaml_documents_every_field_and_matches_the_code_defaults():
    loaded = load_config(ROOT / "configs" / "default.yaml")
    defaults = GuardConfig()
    a, b = loaded.model_dump(), defaults.model_dump()
    a["audit"].pop("path"), b["audit"].pop("path")  # the yaml shows the path's ~ form
    assert a == b

    text = (ROOT / "configs" / "default.yaml").read_text()

    def leaves(model, prefix=""):
        for name, value in model:
            if isinstance(value, BaseModel):
                yield from leaves(value, f"{prefix}{name}.")
            else:
                yield name

    for leaf in leaves(defaults):
        assert f"{leaf}:" in text, f"configs/default.yaml does not document {leaf}"


def write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("policy:\n  veto_threshold: high\n", "policy.veto_threshold = 'high'"),
        ("policy:\n  mode: yolo\n", "policy.mode = 'yolo'"),
        ("model:\n  max_new_tokens: -3\n", "model.max_new_tokens = -3"),
        ("image:\n  max_pixels: [1, 2]\n", "image.max_pixels = [1, 2]"),
        ("policy:\n  deadline_msec: 10\n", "policy.deadline_msec: unknown field"),
        ("policy:\n  veto_threshold: 0.2\n  annotate_threshold: 0.4\n", "annotate_threshold"),
    ],
)
def test_bad_values_name_the_field_and_the_value(tmp_path, text, expected):
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, text))
    assert expected in str(exc.value)
    assert "\n" not in str(exc.value)


def test_not_yaml_and_not_a_mapping_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "policy: [unclosed\n"))
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_empty_file_gives_defaults(tmp_path):
    assert load_config(write(tmp_path, "")).policy == GuardConfig().policy


def test_overrides_validate_and_can_set_null():
    c = GuardConfig().with_overrides(**{"model.id": "m", "policy.max_frame_age_ms": None})
    assert c.model.id == "m" and c.policy.max_frame_age_ms is None
    with pytest.raises(ConfigError, match=r"model\.backend = None"):
        GuardConfig().with_overrides(**{"model.backend": None})
    with pytest.raises(ConfigError, match=r"policy\.deadline_ms"):
        GuardConfig().with_overrides(**{"policy.deadline_ms": -1})


def test_policy_fingerprint_changes_with_the_policy():
    a = GuardConfig().policy
    b = GuardConfig().with_overrides(**{"policy.veto_threshold": 0.7}).policy
    assert a.fingerprint().startswith("default@")
    assert a.fingerprint() != b.fingerprint()
