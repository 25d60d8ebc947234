"""Play options: the TOML config file under the command-line flags (dungeon.config)."""

import pytest

from dungeon.config import ConfigError, merge, read_config


def test_config_file_and_flags(tmp_path):
    cfg = tmp_path / "config.toml"
    cfg.write_text('temperature = 0.4\nmodel = "fake"\ncolor = false\n')
    opts = merge(read_config(cfg), {"temperature": 0.6, "top_p": None})
    assert opts.sampling.temperature == 0.6 and opts.model == "fake" and opts.color is False
    cfg.write_text("warmth = 3\n")
    with pytest.raises(ConfigError, match="unknown setting"):
        read_config(cfg)
    cfg.write_text("temperature = 99\n")
    with pytest.raises(ConfigError, match="temperature"):
        merge(read_config(cfg), {})


def test_the_world_state_switch(tmp_path):
    cfg = tmp_path / "config.toml"
    assert merge({}, {}).state is True
    cfg.write_text("state = false\n")
    assert merge(read_config(cfg), {}).state is False
    cfg.write_text('state = "sometimes"\n')
    with pytest.raises(ConfigError, match="state must be true or false"):
        merge(read_config(cfg), {})


def test_candidates_and_picker_are_options_and_are_checked(tmp_path):
    cfg = tmp_path / "config.toml"
    cfg.write_text('candidates = 3\npicker = "story"\n')
    opts = merge(read_config(cfg), {"candidates": None})
    assert (opts.candidates, opts.picker) == (3, "story")
    assert merge(read_config(cfg), {"candidates": 2}).candidates == 2  # a flag wins
    with pytest.raises(ConfigError, match="candidates must be between 1 and 8, got 0"):
        merge({"candidates": 0}, {})
    with pytest.raises(ConfigError, match="no picker named 'best'"):
        merge({"picker": "best"}, {})


def test_quantize_is_an_option_and_is_checked(tmp_path):
    cfg = tmp_path / "config.toml"
    assert merge({}, {}).quantize == "auto"
    cfg.write_text('quantize = "int8"\n')
    assert merge(read_config(cfg), {}).quantize == "int8"
    assert merge(read_config(cfg), {"quantize": "none"}).quantize == "none"  # a flag wins
    with pytest.raises(ConfigError, match="quantize must be auto, int4, int8 or none"):
        merge({"quantize": "int2"}, {})
