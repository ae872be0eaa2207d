"""The diffkit plugin API: one hook per registry.

A plugin is any module (usually named by an entry point in the ``diffkit`` group) that
implements some of the hooks below with the :data:`diffkit.hookimpl` marker::

    # pyproject.toml of your package
    [project.entry-points.diffkit]
    my_samplers = "my_package.diffkit_plugin"

    # my_package/diffkit_plugin.py
    import diffkit

    @diffkit.hookimpl
    def diffkit_register_samplers(samplers):
        samplers.add("my_euler", my_euler, summary="Euler on the probability-flow ODE")

Every hook receives one :class:`~diffkit.registry.Registrar` bound to the plugin that is
being called, so the registry records the plugin and its distribution for every entry
without the plugin having to say who it is. The built-in components are registered through
exactly these hooks.

What each kind of object must be:

``schedule``
    A callable (usually a frozen attrs class) that, called with keyword configuration,
    returns a :class:`diffkit.schedules.Schedule`.
``spacing``
    A grid function ``fn(schedule, steps, **options) -> sigmas``: float64 σ [steps + 1],
    strictly decreasing, ending at exactly 0, whose keyword-only parameters are its options
    (the schedule gives ``num_train_timesteps``, the ``sigmas`` table [T] and
    ``sigmas_from_timesteps``). A spacing placed at training timesteps also registers
    ``timesteps=fn(T, steps, **options) -> int64 [steps]``. diffkit checks every grid it returns.
``sampler``
    A function with the sampler contract
    ``fn(denoiser, x, sigmas, *, cond=None, generator=None, callback=None, **options) -> x0``:
    ``x`` is in σ form (x = x0 + σ·ε, so the caller passes ``noise * sigmas[0]``), ``sigmas``
    a decreasing 1-D tensor ending at 0, and ``denoiser(x, sigma, cond)`` returns the x0
    estimate for ``sigma`` of shape ``[batch]``. A sampler holds no state between calls.
    Stochastic samplers should also accept ``noise_sampler(sigma, sigma_next) -> tensor``
    so the conformance kit can feed them the same noise as their reference twin.
``backbone`` / ``conditioner`` / ``autoencoder``
    A callable returning an ``nn.Module`` (or conditioner object) from keyword configuration.
``recipe``
    A function ``fn() -> dict`` returning a fresh recipe (JSON-ready nested dicts, see
    :mod:`diffkit.recipes.base`); ``diffkit train --recipe NAME`` then trains it.
``converter``
    A :class:`diffkit.io.converters.DiffusersConverter`: the diffusers ``_class_name`` values it
    reads, the diffkit component it builds (kind and name), ``config_from_diffusers`` and
    ``convert_state_dict``; ``diffkit.load_pretrained`` then reads such diffusers folders.

Useful metadata for :meth:`Registrar.add` (all optional):

``summary``
    One line for ``diffkit list`` (default: the first line of the object's docstring).
``reference``
    A float64 numpy twin with the same contract (numpy arrays in and out), used by
    ``diffkit check`` for an exact parity test.
``options``
    An attrs class describing the options (for documentation and validation).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:  # pragma: no cover - import only for type checkers
    from diffkit.registry import Registrar

PROJECT = "diffkit"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def diffkit_register_schedules(schedules: Registrar) -> None:
    """Add noise schedules: ``schedules.add("linear", LinearSchedule)``.

    The object, called with keyword configuration, returns a schedule (a ᾱ_t table over
    the training timesteps plus the spacings that turn N steps into decreasing σ).
    """


@hookspec
def diffkit_register_spacings(spacings: Registrar) -> None:
    """Add spacings: ``spacings.add("karras", karras_grid, paper="Karras et al. 2022")``.

    The object is a grid function ``fn(schedule, steps, **options) -> σ [steps + 1]`` (see this
    module's docstring); ``schedule.sigmas_for(steps, name)`` and ``diffkit.sample(spacing=name)``
    then use it, and ``diffkit check spacing:NAME`` holds it to the grid contract.
    """


@hookspec
def diffkit_register_samplers(samplers: Registrar) -> None:
    """Add samplers: ``samplers.add("ddim", ddim, reference=ddim_numpy, check=check_eta)``.

    The object is a function with the sampler contract described in this module's docstring;
    its keyword options and their defaults are its signature's. ``check`` (optional) validates
    option values when the sampler is chosen: it is called with the options it names.
    """


@hookspec
def diffkit_register_backbones(backbones: Registrar) -> None:
    """Add backbone networks: ``backbones.add("unet", build_unet, options=UNetConfig)``.

    ``diffkit.build("backbone", name, **config)`` calls the object with the config keywords;
    the module it returns has ``forward(x, t, cond=None)`` and a ``config`` attribute (an attrs
    config registered as ``options``, so saved folders can name the entry).
    """


@hookspec
def diffkit_register_conditioners(conditioners: Registrar) -> None:
    """Add conditioners: ``conditioners.add("class_label", build_class_label, options=ClassLabelConfig)``.

    The built module follows :class:`diffkit.models.conditioners.Conditioner`:
    ``forward(inputs, *, force_drop=None, generator=None) -> Conditioning``, ``null(batch_size)``,
    ``batch_size_of(inputs)``, and a ``config`` attribute.
    """


@hookspec
def diffkit_register_autoencoders(autoencoders: Registrar) -> None:
    """Add autoencoders: ``autoencoders.add("kl", build_kl, options=KLConfig)``.

    The module has ``encode_latents(images)`` and ``decode_latents(latents)`` (scaled latent space).
    """


@hookspec
def diffkit_register_converters(converters: Registrar) -> None:
    """Add diffusers converters: ``converters.add("dit", DIT_CONVERTER)``.

    The object is a :class:`diffkit.io.converters.DiffusersConverter`; ``load_pretrained`` uses it
    for every diffusers model folder whose ``config.json`` names one of its ``diffusers_classes``.
    """


@hookspec
def diffkit_register_recipes(recipes: Registrar) -> None:
    """Add training recipes: ``recipes.add("my_digits", my_digits_recipe)``.

    The object is a function returning a recipe dict; ``diffkit train --recipe NAME`` and
    ``diffkit.recipes.get_recipe(NAME)`` find it, and ``KEY=VALUE`` overrides apply to it.
    """
