"""The plugin system, with fake entry points (no package needs installing)."""

from __future__ import annotations

import subprocess
import sys
import types
import warnings

import pytest

import diffkit
from diffkit import registry
from diffkit.errors import ConflictError, PluginError, UnknownNameError
from diffkit.registry import PluginHost, PluginWarning


class FakeDistribution:
    def __init__(self, name: str, version: str = "1.0") -> None:
        self.metadata = {"Name": name}
        self.version = version


class FakeEntryPoint:
    """Quacks like importlib.metadata.EntryPoint; ``load`` returns a module or raises."""

    def __init__(self, name: str, target, dist: str = "diffkit-fake", version: str = "1.0") -> None:
        self.name, self.value = name, f"fake_{name}"
        self._target = target
        self.dist = FakeDistribution(dist, version)
        self.loads = 0

    def load(self):
        self.loads += 1
        if isinstance(self._target, BaseException):
            raise self._target
        return self._target


def plugin_module(name: str, **hooks) -> types.ModuleType:
    module = types.ModuleType(name)
    for hook_name, fn in hooks.items():
        setattr(module, hook_name, diffkit.hookimpl(fn))
    return module


def sampler_plugin(name: str, *sampler_names: str) -> types.ModuleType:
    def register(samplers):
        for sampler_name in sampler_names:
            samplers.add(sampler_name, _toy_sampler)

    return plugin_module(name, diffkit_register_samplers=register)


def _toy_sampler(denoiser, x, sigmas, *, cond=None, generator=None, callback=None):
    """A toy sampler for registry tests."""
    return x


def host(*entry_points, **environ) -> PluginHost:
    return PluginHost(entry_points=lambda: list(entry_points), environ=environ)


def test_builtins_are_registered_through_the_hooks_with_provenance():
    entry = host().get_entry("sampler", "ddim")
    assert entry.origin.builtin and entry.origin.distribution == "diffkit"
    assert entry.origin.plugin == "diffkit.samplers.builtin"
    assert entry.reference is not None and entry.summary


def test_third_party_entry_is_found_and_records_its_distribution():
    h = host(FakeEntryPoint("foo", sampler_plugin("foo_mod", "foo_euler"), dist="diffkit-foo", version="2.1"))
    entry = h.get_entry("samplers", "foo_euler")
    assert entry.obj is _toy_sampler
    assert (entry.origin.plugin, entry.origin.distribution, entry.origin.version) == ("foo", "diffkit-foo", "2.1")
    assert not entry.origin.builtin
    assert entry.summary == "A toy sampler for registry tests."
    assert "foo_euler" in h.names("sampler") and "ddim" in h.names("sampler")


def test_loading_is_lazy_and_idempotent():
    ep = FakeEntryPoint("foo", sampler_plugin("foo_mod", "foo_euler"))
    h = host(ep)
    assert ep.loads == 0  # constructing the host loads nothing
    h.names("sampler")
    h.names("schedule")
    h.load()
    assert ep.loads == 1


def test_import_diffkit_loads_no_plugin():
    code = (
        "import sys, diffkit\n"
        "assert 'diffkit.samplers.builtin' not in sys.modules\n"
        "assert diffkit.registry.default_host()._loaded is False\n"
        "diffkit.names('sampler')\n"
        "assert 'diffkit.samplers.builtin' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_broken_import_is_skipped_with_a_warning_naming_plugin_distribution_and_exception():
    good = FakeEntryPoint("good", sampler_plugin("good_mod", "good_one"))
    bad = FakeEntryPoint("bad", ImportError("No module named 'missing_dep'"), dist="diffkit-bad", version="0.3")
    h = host(bad, good)
    with pytest.warns(PluginWarning, match=r"bad \(diffkit-bad 0.3\).*import.*missing_dep"):
        names = h.names("sampler")
    assert "good_one" in names
    assert [p.stage for p in h.problems] == ["import"]


def test_strict_mode_turns_a_broken_plugin_into_an_error():
    bad = FakeEntryPoint("bad", RuntimeError("boom"), dist="diffkit-bad")
    with pytest.raises(PluginError, match="bad.*boom"):
        host(bad, DIFFKIT_STRICT_PLUGINS="1").load()


def test_a_plugin_failing_half_way_leaves_nothing_behind():
    def register(samplers):
        samplers.add("first", _toy_sampler)
        raise RuntimeError("second registration failed")

    h = host(FakeEntryPoint("half", plugin_module("half_mod", diffkit_register_samplers=register)))
    with pytest.warns(PluginWarning, match="register.*second registration failed"):
        assert "first" not in h.names("sampler")


def test_misspelled_hook_name_is_caught_by_check_pending():
    def diffkit_register_sampler(samplers):  # missing "s": no such hook
        samplers.add("typo", _toy_sampler)

    module = plugin_module("typo_mod", diffkit_register_sampler=diffkit_register_sampler)
    with pytest.warns(PluginWarning, match="typo.*validate.*diffkit_register_sampler"):
        h = host(FakeEntryPoint("typo", module)).load()
    assert "typo" not in h.names("sampler")
    with pytest.raises(PluginError, match="diffkit_register_sampler"):
        host(FakeEntryPoint("typo", module), DIFFKIT_STRICT_PLUGINS="1").load()


def test_wrong_hook_argument_name_is_a_validation_problem():
    def register(sampler_registry):  # the spec's argument is called "samplers"
        sampler_registry.add("argname", _toy_sampler)

    with pytest.warns(PluginWarning, match="validate"):
        h = host(FakeEntryPoint("args", plugin_module("args_mod", diffkit_register_samplers=register))).load()
    assert "argname" not in h.names("sampler")


def test_two_plugins_claiming_one_name_is_an_error_naming_both():
    a = FakeEntryPoint("alpha", sampler_plugin("alpha_mod", "shared", "alpha_only"), dist="pkg-alpha")
    b = FakeEntryPoint("beta", sampler_plugin("beta_mod", "shared"), dist="pkg-beta")
    h = host(a, b)
    with pytest.warns(PluginWarning, match="shared"):
        h.load()
    with pytest.raises(ConflictError, match=r"alpha \(pkg-alpha 1.0\).*beta \(pkg-beta 1.0\)"):
        h.get_entry("sampler", "shared")
    assert "shared" not in h.names("sampler")
    assert "alpha_only" in h.names("sampler")  # the rest of each plugin still works
    with pytest.raises(ConflictError):
        host(a, b, DIFFKIT_STRICT_PLUGINS="1").load()


def test_a_plugin_cannot_replace_a_builtin():
    h = host(FakeEntryPoint("hijack", sampler_plugin("hijack_mod", "ddim")))
    with pytest.warns(PluginWarning, match="cannot replace a built-in"):
        entry = h.get_entry("sampler", "ddim")
    assert entry.origin.builtin


def test_blocked_plugins_are_not_loaded():
    ep = FakeEntryPoint("foo", sampler_plugin("foo_mod", "foo_euler"), dist="diffkit-foo")
    h = host(ep, DIFFKIT_DISABLE_PLUGINS="other, foo")
    assert "foo_euler" not in h.names("sampler")
    assert ep.loads == 0 and h.blocked == ["foo (diffkit-foo 1.0)"]
    # blocking by distribution name works too
    assert "foo_euler" not in host(ep, DIFFKIT_DISABLE_PLUGINS="diffkit-foo").names("sampler")


def test_autoload_off_loads_builtins_only():
    def entry_points():
        raise AssertionError("entry points must not be read with autoload disabled")

    h = PluginHost(entry_points=entry_points, environ={"DIFFKIT_DISABLE_PLUGIN_AUTOLOAD": "1"})
    names = h.names("sampler")
    assert {"ddim", "ddpm"} <= set(names)
    assert all(h.get_entry("sampler", name).origin.builtin for name in names)


def test_unknown_name_suggests_close_matches_and_never_crashes_without_any():
    h = host()
    with pytest.raises(UnknownNameError, match=r"did you mean .ddim. or"):
        h.get_entry("sampler", "dddim")
    with pytest.raises(UnknownNameError) as info:
        h.get_entry("sampler", "zzzzzzzz")
    assert info.value.suggestions == [] and "valid: ddim, ddpm" in str(info.value)
    empty = PluginHost(builtins=(), entry_points=lambda: [], environ={})
    with pytest.raises(UnknownNameError, match="no autoencoder is registered"):
        empty.get_entry("autoencoder", "kl")
    with pytest.raises(UnknownNameError, match="did you mean 'sampler'"):
        h.get_entry("smapler", "ddim")


def test_unknown_name_mentions_plugins_that_failed_to_load():
    h = host(FakeEntryPoint("bad", ImportError("nope"), dist="diffkit-bad"))
    with pytest.warns(PluginWarning), pytest.raises(UnknownNameError, match="failed to load.*bad"):
        h.get_entry("sampler", "bad_sampler")


def test_registrar_rejects_bad_names_and_objects():
    def register(samplers):
        samplers.add("Bad Name", _toy_sampler)

    with pytest.warns(PluginWarning, match="not valid"):
        host(FakeEntryPoint("x", plugin_module("x_mod", diffkit_register_samplers=register))).load()

    def register_object(samplers):
        samplers.add("not_callable", 42)

    with pytest.warns(PluginWarning, match="must be callable"):
        host(FakeEntryPoint("y", plugin_module("y_mod", diffkit_register_samplers=register_object))).load()


def test_module_level_api_uses_the_default_host(monkeypatch):
    registry.reset(host(FakeEntryPoint("foo", sampler_plugin("foo_mod", "foo_euler"))))
    assert diffkit.get("sampler", "foo_euler") is _toy_sampler
    assert "foo_euler" in diffkit.names("samplers")


def test_build_binds_sampler_options_and_rejects_unknown_ones():
    bound = diffkit.build("sampler", "ddim", eta=0.5)
    assert bound.keywords == {"eta": 0.5}
    with pytest.raises(UnknownNameError, match=r"option of sampler 'ddim'.*'etta'.*did you mean 'eta'"):
        diffkit.build("sampler", "ddim", etta=0.5)
    schedule = diffkit.build("schedule", "linear", num_train_timesteps=100)
    assert schedule.num_train_timesteps == 100
    with pytest.raises(UnknownNameError, match="beta_end"):
        diffkit.build("schedule", "linear", beta_ned=0.01)


def test_no_warning_when_everything_loads():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        host(FakeEntryPoint("foo", sampler_plugin("foo_mod", "foo_euler"))).load()


def test_unknown_metadata_keys_are_an_error_with_suggestions():
    def register(samplers):
        samplers.add("typo_meta", _toy_sampler, refrence=None)

    with pytest.warns(PluginWarning, match="unknown metadata key.*'refrence'.*did you mean 'reference'"):
        h = host(FakeEntryPoint("meta", plugin_module("meta_mod", diffkit_register_samplers=register))).load()
    assert "typo_meta" not in h.names("sampler")
