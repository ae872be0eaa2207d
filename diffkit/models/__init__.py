"""The networks: backbones, conditioners and autoencoders, and the config mixin they share."""
