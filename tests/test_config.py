"""Config sections read from plain dicts: partial sections keep the defaults of the task they belong to."""

from meddiff.config import from_dict
from meddiff.tasks.fuse import FuseConfig
from meddiff.tasks.synthesize import SynthesizeConfig


def test_a_partial_section_keeps_the_tasks_own_defaults_for_the_keys_it_leaves_out():
    fuse = from_dict(FuseConfig, {"sampler": {"steps": 10}})
    assert (fuse.sampler.name, fuse.sampler.steps) == ("ddim", 10)  # fusion's sampler, not the global dpm++
    synth = from_dict(SynthesizeConfig, {"sampler": {"steps": 10}})
    assert (synth.sampler.guidance_scale, synth.sampler.steps) == (1.5, 10)  # synthesis grids keep guidance


def test_a_missing_section_is_the_tasks_default_and_a_given_key_overrides_it():
    assert from_dict(FuseConfig, {}).sampler == FuseConfig().sampler
    assert from_dict(FuseConfig, {"sampler": {"name": "dpm++"}}).sampler.name == "dpm++"
