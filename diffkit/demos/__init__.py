"""The two demos that train for real on a CPU: ``digits`` (class-conditional UNet on the embedded
8×8 handwritten digits) and ``shapes`` (latent text-to-image on generated captioned shapes).

Each demo folder holds its data set, its judge (a classifier and the metrics built on it), its
recipe and its evaluation; :mod:`diffkit.demos.builtin` registers the recipes, and the Fréchet
distance and the judge cache are shared by both.
"""
