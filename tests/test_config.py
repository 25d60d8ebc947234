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
