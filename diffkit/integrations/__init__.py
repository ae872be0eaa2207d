"""Bridges to other diffusion libraries; each subpackage needs its library installed (an optional extra).

``diffkit.integrations.diffusers`` (``pip install 'diffkit[diffusers]'``): diffkit samplers as a
diffusers scheduler, and diffusers' schedulers as diffkit samplers. ``import diffkit`` imports none
of them.
"""
