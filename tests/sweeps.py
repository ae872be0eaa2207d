"""What the sampler, schedule and training tests sweep: every built-in VP schedule and timestep spacing,
and the registered samplers the suite holds to the kit."""

import diffkit

SCHEDULES = ("linear", "scaled_linear", "cosine", "sigmoid")
SPACINGS = ("leading", "trailing", "linspace")

# Plugins that wrap another library's samplers (plugins/diffkit-diffusers): the kit measures them and
# docs/diffusers-conformance.md reports what it finds, failures included; the suite does not require
# a peer library to conform.
PEER_LIBRARY_PLUGINS = frozenset({"diffkit-diffusers"})


def conforming_samplers() -> list[str]:
    """Registered sampler names the suite holds to every check: built-ins and installed plugins, except
    wrappers of a peer library (:data:`PEER_LIBRARY_PLUGINS`)."""
    import diffkit

    return [name for name in diffkit.names("sampler")
            if diffkit.get_entry("sampler", name).origin.distribution not in PEER_LIBRARY_PLUGINS]


def builtin_samplers() -> list[str]:
    """The samplers diffkit itself registers."""
    return [name for name in diffkit.names("sampler") if diffkit.get_entry("sampler", name).origin.builtin]
