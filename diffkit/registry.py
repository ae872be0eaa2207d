"""Registries of components, filled through pluggy hooks.

Loading happens once, lazily, on the first lookup (never at ``import diffkit``):

1. the built-in plugin modules (:data:`BUILTIN_PLUGINS`) are registered;
2. unless ``DIFFKIT_DISABLE_PLUGIN_AUTOLOAD=1``, every entry point of the ``diffkit`` group is
   imported and registered, except those named in ``DIFFKIT_DISABLE_PLUGINS=a,b``;
3. pluggy's ``check_pending()`` runs after each plugin, so a misspelled hook name is caught;
4. each plugin's hooks are called with a :class:`Registrar` bound to that plugin.

A third-party plugin that fails in any step is skipped with a :class:`PluginWarning` naming
the plugin, its distribution and the exception (``DIFFKIT_STRICT_PLUGINS=1`` raises instead);
a failing built-in always raises. Two third-party plugins claiming one name make that name
unusable (looking it up raises :class:`~diffkit.errors.ConflictError` naming both) rather
than letting one silently win; a plugin can never replace a built-in.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import os
import re
import threading
import warnings
from collections.abc import Callable, Iterable, Mapping
from importlib import metadata as importlib_metadata
from types import MappingProxyType
from typing import Any

import attrs
import pluggy

from diffkit import hookspecs
from diffkit.errors import ConfigError, ConflictError, DiffkitError, PluginError, UnknownNameError

ENTRY_POINT_GROUP = "diffkit"
KINDS: tuple[str, ...] = (
    "schedule", "spacing", "sampler", "backbone", "conditioner", "autoencoder", "converter", "recipe",
)

# Kinds whose entries are functions: ``build`` binds options to them (functools.partial)
# instead of calling them; the arguments every call passes are not options.
FUNCTION_ARGUMENTS: Mapping[str, frozenset[str]] = MappingProxyType({
    "sampler": frozenset({"denoiser", "x", "sigmas", "cond", "generator", "callback"}),
    "spacing": frozenset({"schedule", "steps"}),
})
BUILTIN_PLUGINS: tuple[str, ...] = (
    "diffkit.schedules.builtin",
    "diffkit.samplers.builtin",
    "diffkit.models.backbones.builtin",
    "diffkit.models.autoencoders.builtin",
    "diffkit.models.conditioners.builtin",
    "diffkit.io.diffusers.builtin",
    "diffkit.demos.builtin",
    "diffkit.recipes.builtin",
)

ENV_STRICT = "DIFFKIT_STRICT_PLUGINS"
ENV_NO_AUTOLOAD = "DIFFKIT_DISABLE_PLUGIN_AUTOLOAD"
ENV_BLOCKED = "DIFFKIT_DISABLE_PLUGINS"

_NAME_PATTERN = re.compile(r"[a-z][a-z0-9_.\-]*")  # the whole name (fullmatch: no trailing newline)

# Metadata a registry entry may carry (see Registrar.add); anything else is a typo.
METADATA_KEYS: dict[str, str] = {
    "reference": "a float64 numpy twin with the same contract (used by `diffkit check`)",
    "options": "an attrs class documenting the keyword options / configuration",
    "check": "a function validating a sampler's or spacing's options: check(**options) raises on a bad value",
    "order": "the convergence order a sampler claims (the conformance kit then requires it)",
    "paper": "the citation of the method, e.g. 'Song et al. 2021'",
    "timesteps": "for a spacing placed at training timesteps: fn(T, steps, **options) -> int64 timesteps [steps]",
}


class PluginWarning(UserWarning):
    """A plugin was skipped or one of its entries rejected; the message says why."""


@attrs.frozen
class Origin:
    """Where a registry entry came from."""

    plugin: str
    distribution: str | None = None
    version: str | None = None
    builtin: bool = False

    def describe(self) -> str:
        """``plugin (distribution version)`` for messages and ``diffkit list``."""
        dist = " ".join(p for p in (self.distribution, self.version) if p)
        return f"{self.plugin} ({dist})" if dist else self.plugin


@attrs.frozen
class Entry:
    """One registered component: its name, the object and where it came from."""

    kind: str
    name: str
    obj: Any = attrs.field(eq=False, repr=False)
    summary: str
    origin: Origin
    metadata: Mapping[str, Any] = attrs.field(factory=dict, eq=False, repr=False)

    @property
    def reference(self) -> Callable[..., Any] | None:
        """The float64 numpy twin registered with the entry, if any."""
        return self.metadata.get("reference")

    @property
    def options(self) -> type | None:
        """The options/config class registered with the entry, if any."""
        return self.metadata.get("options")


@attrs.frozen
class PluginProblem:
    """A plugin (or one entry of it) that could not be used, and why."""

    origin: Origin
    stage: str  # "import", "validate", "register" or "conflict"
    message: str

    def describe(self) -> str:
        return f"plugin {self.origin.describe()} failed at {self.stage}: {self.message}"


class Registrar:
    """The object a hook receives: ``add(name, obj, **metadata)`` registers one entry.

    Entries are staged and only become visible once every hook of the plugin has run
    without raising, so a plugin that fails half-way leaves nothing behind.
    """

    def __init__(self, kind: str, origin: Origin) -> None:
        self.kind = kind
        self.origin = origin
        self.staged: list[Entry] = []

    def add(self, name: str, obj: Any, *, summary: str | None = None, **metadata: Any) -> None:
        """Register ``obj`` under ``name``.

        Args:
            name: lower-case, starting with a letter; letters, digits, ``_``, ``-`` and ``.``.
            obj: the component (see :mod:`diffkit.hookspecs` for what each kind expects).
            summary: one line for ``diffkit list``; defaults to the docstring's first line.
            **metadata: any of :data:`METADATA_KEYS` — ``reference=`` (a float64 numpy twin),
                ``options=`` (an attrs class), ``order=`` (claimed convergence order),
                ``paper=`` (a citation). Unknown keys are an error.
        """
        if not isinstance(name, str) or not _NAME_PATTERN.fullmatch(name):
            raise ConfigError(
                f"{self.kind} name {name!r} from {self.origin.describe()} is not valid: use "
                "lower-case letters, digits, '_', '-' or '.', starting with a letter"
            )
        if not callable(obj):
            raise ConfigError(f"{self.kind} {name!r} must be callable, got {type(obj).__name__}")
        unknown = sorted(set(metadata) - set(METADATA_KEYS))
        if unknown:
            raise UnknownNameError(f"metadata key (for {self.kind} {name!r})", unknown[0], METADATA_KEYS)
        if any(e.name == name for e in self.staged):
            raise ConflictError(f"{self.origin.describe()} registers {self.kind} {name!r} twice")
        if summary is None:
            summary = _first_docstring_line(obj)
        self.staged.append(
            Entry(self.kind, name, obj, summary, self.origin, MappingProxyType(dict(metadata)))
        )


def _first_docstring_line(obj: Any) -> str:
    doc = inspect.getdoc(obj) or ""
    first = doc.strip().splitlines()[0] if doc.strip() else ""
    return first.replace("``", "")  # reST literals read as plain text in `diffkit list`


def normalize_kind(kind: str) -> str:
    """Accept ``"sampler"`` or ``"samplers"``; raise with close matches otherwise."""
    if kind in KINDS:
        return kind
    if isinstance(kind, str) and kind.endswith("s") and kind[:-1] in KINDS:
        return kind[:-1]
    raise UnknownNameError("kind (singular or plural)", kind, KINDS)


def _flag(environ: Mapping[str, str], key: str) -> bool:
    return environ.get(key, "").strip().lower() in {"1", "true", "yes", "on"}


def _default_entry_points() -> list[importlib_metadata.EntryPoint]:
    return list(importlib_metadata.entry_points(group=ENTRY_POINT_GROUP))


class PluginHost:
    """Loads plugins and holds the registries. One default instance serves :func:`get` etc.

    Args:
        builtins: module names of the built-in plugins.
        entry_points: a callable returning entry points (tests pass fakes).
        environ: the environment to read the ``DIFFKIT_*`` switches from.
    """

    def __init__(
        self,
        *,
        builtins: Iterable[str] = BUILTIN_PLUGINS,
        entry_points: Callable[[], Iterable[Any]] = _default_entry_points,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self._builtins = tuple(builtins)
        self._entry_points = entry_points
        self._environ = os.environ if environ is None else environ
        self._lock = threading.RLock()
        self._loaded = False
        self.entries: dict[str, dict[str, Entry]] = {k: {} for k in KINDS}
        self.conflicts: dict[str, dict[str, list[Entry]]] = {k: {} for k in KINDS}
        self.problems: list[PluginProblem] = []
        self.blocked: list[str] = []
        self.plugins: list[Origin] = []

    @property
    def strict(self) -> bool:
        return _flag(self._environ, ENV_STRICT)

    # -- loading ---------------------------------------------------------------------------

    def load(self) -> PluginHost:
        """Load every plugin once; later calls return at once."""
        with self._lock:
            if not self._loaded:
                self._load()
                self._loaded = True
        return self

    def _load(self) -> None:
        pm = pluggy.PluginManager(hookspecs.PROJECT)
        pm.add_hookspecs(hookspecs)
        registered: list[tuple[Origin, object]] = []
        for module_name in self._builtins:
            module = importlib.import_module(module_name)
            origin = Origin(module_name, "diffkit", _version("diffkit"), builtin=True)
            pm.register(module, name=module_name)
            pm.check_pending()  # a built-in with a misspelled hook is a bug in diffkit: raise
            registered.append((origin, module))
        if not _flag(self._environ, ENV_NO_AUTOLOAD):
            registered.extend(self._register_entry_points(pm))
        for origin, plugin in registered:
            self._collect(pm, origin, plugin)

    def _register_entry_points(self, pm: pluggy.PluginManager) -> list[tuple[Origin, object]]:
        blocked = {b.strip() for b in self._environ.get(ENV_BLOCKED, "").split(",") if b.strip()}
        seen: set[tuple[str, str]] = set()
        registered = []
        for ep in sorted(self._entry_points(), key=lambda e: (_dist_name(e) or "", e.name)):
            if (ep.name, ep.value) in seen:  # one distribution seen twice on sys.path
                continue
            seen.add((ep.name, ep.value))
            origin = Origin(ep.name, _dist_name(ep), _dist_version(ep))
            if ep.name in blocked or (origin.distribution or "") in blocked:
                self.blocked.append(origin.describe())
                continue
            try:
                plugin = ep.load()
            except Exception as exc:  # noqa: BLE001 - any import failure skips the plugin
                self._problem(origin, "import", exc)
                continue
            if pm.is_registered(plugin):
                continue
            try:
                pm.register(plugin, name=ep.name)
                pm.check_pending()
            except Exception as exc:  # noqa: BLE001 - PluginValidationError, duplicate name
                if pm.is_registered(plugin):
                    pm.unregister(plugin)
                self._problem(origin, "validate", exc)
                continue
            registered.append((origin, plugin))
        return registered

    def _collect(self, pm: pluggy.PluginManager, origin: Origin, plugin: object) -> None:
        """Call every hook of one plugin; merge its entries only if none raised."""
        plugin_name = pm.get_name(plugin)
        staged: list[Entry] = []
        for kind in KINDS:
            caller = getattr(pm.hook, f"diffkit_register_{kind}s")
            for impl in caller.get_hookimpls():
                if impl.plugin_name != plugin_name:
                    continue
                registrar = Registrar(kind, origin)
                try:
                    impl.function(*[registrar for _ in impl.argnames])
                except Exception as exc:  # noqa: BLE001 - a broken plugin is skipped whole
                    if origin.builtin:
                        raise
                    self._problem(origin, "register", exc)
                    return
                staged.extend(registrar.staged)
        self.plugins.append(origin)
        for entry in staged:
            self._merge(entry)

    def _merge(self, entry: Entry) -> None:
        table, conflicts = self.entries[entry.kind], self.conflicts[entry.kind]
        if entry.name in conflicts:
            conflicts[entry.name].append(entry)
            self._conflict(entry, conflicts[entry.name][0])
            return
        existing = table.get(entry.name)
        if existing is None:
            table[entry.name] = entry
        elif existing.origin.builtin:
            message = (
                f"{entry.kind} {entry.name!r} is provided by the built-in plugin "
                f"{existing.origin.describe()}; a plugin cannot replace a built-in, so this "
                "entry is ignored: register it under another name"
            )
            self._problem(entry.origin, "conflict", ConflictError(message))
        else:
            del table[entry.name]
            conflicts[entry.name] = [existing, entry]
            self._conflict(entry, existing)

    def _conflict(self, entry: Entry, other: Entry) -> None:
        message = (
            f"{entry.kind} {entry.name!r} is claimed by both {other.origin.describe()} and "
            f"{entry.origin.describe()}; neither is used. Uninstall one, or block one with "
            f"{ENV_BLOCKED}={entry.origin.plugin}"
        )
        self._problem(entry.origin, "conflict", ConflictError(message))

    def _problem(self, origin: Origin, stage: str, exc: BaseException) -> None:
        message = str(exc) if isinstance(exc, ConflictError) else f"{type(exc).__name__}: {exc}"
        problem = PluginProblem(origin, stage, message)
        if self.strict:
            raise (exc if isinstance(exc, ConflictError) else PluginError(problem.describe())) from exc
        self.problems.append(problem)
        warnings.warn(problem.describe(), PluginWarning, stacklevel=4)

    # -- lookup ----------------------------------------------------------------------------

    def get_entry(self, kind: str, name: str) -> Entry:
        """The :class:`Entry` registered as ``name`` in the ``kind`` registry."""
        kind = normalize_kind(kind)
        self.load()
        entry = self.entries[kind].get(name)
        if entry is not None:
            return entry
        claims = self.conflicts[kind].get(name)
        if claims:
            who = " and ".join(e.origin.describe() for e in claims)
            raise ConflictError(
                f"{kind} {name!r} is claimed by {who}; uninstall one of them or block one with "
                f"{ENV_BLOCKED}=<plugin name>"
            )
        raise self.unknown_name_error(kind, name, self.entries[kind])

    def unknown_name_error(self, what: str, name: str, valid: Iterable[str]) -> UnknownNameError:
        """An :class:`UnknownNameError` that also names plugins which failed to load."""
        error = UnknownNameError(what, name, valid)
        broken = [p.origin.describe() for p in self.load().problems if p.stage != "conflict"]
        if broken:
            error.args = (
                f"{error.args[0]}. Some plugins failed to load and may provide it: "
                f"{', '.join(broken)} (see `diffkit list`)",
            )
        return error

    def names(self, kind: str) -> list[str]:
        """The sorted names registered for ``kind``."""
        kind = normalize_kind(kind)
        self.load()
        return sorted(self.entries[kind])


def _dist_name(ep: Any) -> str | None:
    dist = getattr(ep, "dist", None)
    return dist.metadata["Name"] if dist is not None else None


def _dist_version(ep: Any) -> str | None:
    dist = getattr(ep, "dist", None)
    return dist.version if dist is not None else None


def _version(distribution: str) -> str | None:
    try:
        return importlib_metadata.version(distribution)
    except importlib_metadata.PackageNotFoundError:
        return None


_default_host: PluginHost | None = None
_default_lock = threading.Lock()


def default_host() -> PluginHost:
    """The process-wide :class:`PluginHost`, created (not yet loaded) on first use."""
    global _default_host
    with _default_lock:
        if _default_host is None:
            _default_host = PluginHost()
        return _default_host


def reset(host: PluginHost | None = None) -> None:
    """Forget loaded plugins (or install ``host``); the next lookup loads again."""
    global _default_host
    with _default_lock:
        _default_host = host


def get_entry(kind: str, name: str) -> Entry:
    """The registry :class:`Entry` (object plus provenance) for ``name``."""
    return default_host().get_entry(kind, name)


def get(kind: str, name: str) -> Any:
    """The object registered as ``name`` in the ``kind`` registry.

    Raises :class:`~diffkit.errors.UnknownNameError` (with close matches) for unknown names.
    """
    return get_entry(kind, name).obj


def names(kind: str) -> list[str]:
    """Sorted names registered for ``kind`` (``"sampler"``, ``"schedule"``, …)."""
    return default_host().names(kind)


def build(kind: str, name: str, **config: Any) -> Any:
    """An instance of the ``kind`` entry ``name`` configured from keyword arguments.

    For samplers and spacings this is the function with its options bound
    (``functools.partial``); for other kinds it is ``obj(**config)``. Unknown keywords raise
    :class:`~diffkit.errors.ConfigError` listing the valid ones.
    """
    entry = get_entry(kind, name)
    _check_keywords(entry, config)
    if entry.kind in FUNCTION_ARGUMENTS:
        _check_option_values(entry, config)
        return functools.partial(entry.obj, **config)
    return entry.obj(**config)


def _check_option_values(entry: Entry, options: Mapping[str, Any]) -> None:
    """Validate a sampler's or spacing's option values when it is chosen, not at its first step.

    With ``check=`` registered, ``check`` is called with the options it names: the values given,
    the function's own defaults for the rest (the signature states each default once). With an
    attrs ``options=`` class instead, its validators run on the values given.
    """
    check = entry.metadata.get("check")
    try:
        if check is not None:
            values = {**_keyword_defaults(entry.obj), **options}
            wanted = inspect.signature(check).parameters
            check(**{key: value for key, value in values.items() if key in wanted})
        elif hasattr(entry.options, "__attrs_attrs__"):
            known = {field.name for field in entry.options.__attrs_attrs__}
            entry.options(**{key: value for key, value in options.items() if key in known})
    except DiffkitError as error:
        raise ConfigError(f"{entry.kind} {entry.name!r}: {error}") from error
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{entry.kind} {entry.name!r}: an option has the wrong type or value ({error})") from error


def _keyword_defaults(fn: Callable[..., Any]) -> dict[str, Any]:
    """The keyword parameters of ``fn`` that have defaults, with them."""
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return {}
    return {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}


def _check_keywords(entry: Entry, config: Mapping[str, Any]) -> None:
    try:
        signature = inspect.signature(entry.obj)
    except (TypeError, ValueError):  # builtins without a signature: let the call decide
        return
    params = signature.parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    fixed = FUNCTION_ARGUMENTS.get(entry.kind, frozenset())
    valid = [n for n, p in params.items() if n not in fixed and p.kind is not p.VAR_POSITIONAL]
    unknown = [key for key in config if key not in valid]
    if unknown:
        raise UnknownNameError(f"option of {entry.kind} {entry.name!r}", unknown[0], valid)
