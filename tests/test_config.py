"""Configuration: defaults, YAML round trip, --set overrides, provenance ids."""

from __future__ import annotations

import pytest
from pydantic import Field

from darkroom.config import (
    DarkroomConfig,
    _Section,
    apply_overrides,
    critical_params,
    load_config,
    save_config,
)
from darkroom.errors import ConfigError
from darkroom.provenance import provenance_id


def test_defaults_round_trip(tmp_path):
    cfg = load_config(None)
    assert cfg.registry.url == "sqlite:///registry.db"
    save_config(cfg, tmp_path / "darkroom.yaml")
    text = (tmp_path / "darkroom.yaml").read_text()
    assert "registry:" in text and "ingest:" in text
    assert load_config(tmp_path / "darkroom.yaml") == cfg


def test_set_overrides_parse_yaml_values(tmp_path):
    cfg = load_config(None, ["ingest.batch_size=7", "ingest.extensions=[.fits, .fit]", "registry.echo=true"])
    assert cfg.ingest.batch_size == 7
    assert cfg.ingest.extensions == [".fits", ".fit"]
    assert cfg.registry.echo is True


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("ingest.batch_size=0", "ingest.batch_size"),
        ("ingest.no_such_key=1", "ingest.no_such_key"),
        ("nosection.key=1", "nosection"),
        ("ingest.batch_size", "section.key=value"),
    ],
)
def test_bad_overrides_name_the_field(override, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_config(None, [override])


def test_bad_yaml_is_one_line(tmp_path):
    p = tmp_path / "darkroom.yaml"
    p.write_text("registry: [unclosed\n")
    with pytest.raises(ConfigError) as info:
        load_config(p)
    assert "\n" not in info.value.reason and "not valid YAML" in info.value.reason


def test_apply_overrides_does_not_mutate():
    data = {"a": {"b": 1}}
    out = apply_overrides(data, ["a.b=2", "a.c.d=x"])
    assert data == {"a": {"b": 1}}
    assert out == {"a": {"b": 2, "c": {"d": "x"}}}


class _Demo(_Section):
    sigma: float = 3.0
    n_workers: int = Field(2, json_schema_extra={"critical": False})


def test_critical_params_and_provenance():
    a, b, c = _Demo(), _Demo(n_workers=8), _Demo(sigma=4.0)
    assert critical_params(a) == {"sigma": 3.0}
    assert critical_params(a) == critical_params(b)
    pa = provenance_id("calib", critical_params(a), upstream=["x"])
    assert pa == provenance_id("calib", critical_params(b), upstream=["x"])  # non-critical ignored
    assert pa != provenance_id("calib", critical_params(c), upstream=["x"])  # critical changes id
    assert pa != provenance_id("calib", critical_params(a), upstream=["y"])  # upstream changes id
    assert pa != provenance_id("calib", critical_params(a), upstream=["x"], version="99.0")
    assert len(pa) == 16 and int(pa, 16) >= 0


def test_whole_config_has_no_critical_registry_fields():
    # Where the registry lives must never change a product's provenance.
    assert "registry" not in critical_params(DarkroomConfig())
