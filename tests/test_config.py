"""Play options: the TOML config file under the command-line flags (dungeon.config)."""

import pytest

from dungeon.config import ConfigError, PlayOptions, merge, read_config, sampling_in_effect
from dungeon.generator import SamplingSettings


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


# --- the model's recommended sampling under the user's choices ---------------------------------

ADVICE = {"temperature": 0.5, "top_p": 0.85}


def test_the_model_s_recommendation_fills_what_the_user_did_not_choose(tmp_path):
    in_effect = sampling_in_effect(merge({}, {"top_k": 20}), ADVICE)
    assert (in_effect.temperature, in_effect.top_p, in_effect.top_k) == (0.5, 0.85, 20)
    assert sampling_in_effect(merge({}, {}), {}) == SamplingSettings()


def test_a_chosen_value_beats_the_recommendation_even_when_it_is_the_default(tmp_path):
    cfg = tmp_path / "config.toml"
    cfg.write_text("temperature = 0.8\n")  # the default, written out: still the user's choice
    from_file = merge(read_config(cfg), {"temperature": None})
    assert from_file.sampling_chosen == {"temperature"}
    assert sampling_in_effect(from_file, ADVICE).temperature == 0.8
    from_flag = merge({}, {"top_p": 0.92})  # --top-p 0.92, the default
    assert sampling_in_effect(from_flag, ADVICE).top_p == 0.92
    assert sampling_in_effect(from_flag, ADVICE).temperature == 0.5
    # A front end that builds its options itself keeps any value it changed.
    mine = PlayOptions(sampling=SamplingSettings(temperature=1.1))
    assert sampling_in_effect(mine, ADVICE).temperature == 1.1


def test_a_recommendation_that_clashes_with_the_user_s_choices_gives_way():
    opts = merge({}, {"min_new_tokens": 30})
    assert sampling_in_effect(opts, {"max_new_tokens": 20}) == opts.sampling
