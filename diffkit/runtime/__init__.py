"""How a network runs on the hardware: mixed precision, TF32, ``torch.compile``, channels-last."""
