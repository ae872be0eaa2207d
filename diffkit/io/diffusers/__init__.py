"""One converter per diffusers architecture, each a registered ``converter``
(:class:`~diffkit.io.converters.DiffusersConverter`)."""
